"""HTTP handlers, thin: parse, call the domain, shape the answer."""
