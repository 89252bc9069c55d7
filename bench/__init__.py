"""The benchmark harness: ``python -m bench`` (see ``docs/benchmarks.md``).

It starts its own embedded PostgreSQL and ``python -m server`` processes, drives them over loopback
with a light raw-socket client, runs pgbench on the same SQL as the ceiling, and writes
``bench/results/<timestamp>.json`` and the human report.
"""
