"""Benchmarks: each measures the project's figure beside its baseline in the same run.

Run them all with ``make bench`` (``python -m benchmarks``) or one with ``python -m benchmarks.NAME``.
Each prints human-readable lines and, last, one JSON object with its figures.
"""
