"""Malformed-input fuzzing of the loaders and ``medalloc validate``: seeded mutations and the checks each must pass."""
