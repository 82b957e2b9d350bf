"""Helpers of ``bench/compare.py``: one module per system under test, plus the process and
measurement plumbing they share. Each peer module imports its client library lazily, so a
peer that is not installed is skipped rather than breaking the run."""
