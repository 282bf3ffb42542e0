"""Benchmarks of exprsn-ipc against the libraries it is built on.

Run ``python -m benchmarks`` (``--quick`` for a smoke run, ``--only tokens,memory``
to pick suites). Every load targets 127.0.0.1, is bounded in count and time, and
stops by itself. ``docs/performance.md`` describes the method and the results.
"""
