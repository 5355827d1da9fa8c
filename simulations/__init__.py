"""Simulated federations, scenarios and benchmarks for researchers."""
