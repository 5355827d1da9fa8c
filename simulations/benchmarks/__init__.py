"""Benchmarks that print side-by-side ratios (run as python -m simulations.benchmarks.NAME)."""
