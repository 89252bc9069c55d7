"""Scenario 9 of the benchmark, streaming at a model's pace (issue 11): many answers open at
once, each receiving ~40 small deltas a second, on the embedded and on an external PostgreSQL,
beside an earlier build when asked.

- ``scenario``: the steps (steady state and a burst per N), the long-answer pair, the profile;
  ``setup``: from the command line; ``warmup``: each new server's warm-up;
- ``shape``: what a step asks for (steady, burst, waves) and its window; ``step``: one step
  (requests, the client, WAL, rows, checks); ``figures``: its numbers;
- ``client.c``, ``client``: the cheap load client (C, built at run time; Python as fallback),
  ``spec``: what it is given;
  ``run``: building and running it, measuring CPU over the window meanwhile;
- ``waldump``: the WAL by kind of record; ``servermetrics``: the server's own ``/metrics``;
- ``target``: the databases; ``check``: the invariants through the API; ``prose``: prompts;
  ``drift``: the demo generator's own drift;
- ``report`` (with ``lagreport``, ``walreport``, ``costs``, ``plots``, ``results``) and
  ``targets``: its part of docs/benchmarks.md.
"""
