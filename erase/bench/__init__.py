"""Benchmarks: each prints ratios measured in one run and writes a JSON record (see BENCHMARKS.md)."""
