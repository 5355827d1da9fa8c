"""Flower ClientApp: a hospital node that trains the shared forecaster with DP on its own records."""
