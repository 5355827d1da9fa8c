"""Flower ServerApp: the coordinator that aggregates hospital updates into one shared model."""
