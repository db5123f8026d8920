"""The benchmarks of ``backfill`` behind ``benchmarks/bench.py``, by concern.

- ``cli``: the options and running the benchmarks they choose (``main``).
- ``session``: the ``Session`` passed to every benchmark (report, --wait-quiet, sources
  measured), the table's ``Row`` and number formats.
- ``inputs``: generating the mapping files, deterministically.
- ``measuring``: a child process measured through ``measure.py``; CPU sampling, CPU hogs,
  waiting for a quiet machine.
- ``standin``: the stand-in in its own process, and the logged one ``--serve-logged`` runs.
- ``validate``, ``sending``, ``paced``: the benchmarks (validate; run and --rate; latency and
  backoff).
- ``table``: results.md, with the machine and the sources measured.
- ``common``: paths, limits and small helpers.
"""
