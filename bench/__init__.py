"""Benchmark suite for taskmill (run ``python bench/run.py``; see bench/README.md)."""
