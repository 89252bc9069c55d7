"""The Citus step of the benchmark (issue 19): model pace on a Citus cluster beside one
PostgreSQL, the service's statements by pgbench on both, and the EXPLAIN test on the cluster.

- ``setup``: from the command line (or skipped, and why); ``cluster``: the cluster and its
  databases; ``scenario``: the step; ``report``: its part of docs/benchmarks.md and its targets.
"""
