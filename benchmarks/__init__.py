"""Benchmarks: each module is one measurement, run as ``.venv/bin/python -m benchmarks.<name>``.

Results are printed as a table and written to ``benchmarks/results/<name>.json`` (git-ignored).
"""
