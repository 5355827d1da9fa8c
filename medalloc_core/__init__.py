"""MedAlloc core: hospital data contract, synthetic regions, forecasters, DP training, privacy ledger, allocation.

Importable without Flower: a researcher or a hospital analyst can use it alone.
"""

__version__ = "0.1.0"
