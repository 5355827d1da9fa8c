"""Demand forecasting, the domain library: windows and scaling, forecaster models, local training (plain and
DP), rolling-origin evaluation, metrics, classical baselines, the forecaster registry, explanations.

Free of Flower and of any task plumbing: the forecasting task (``medalloc_core.tasks.forecasting``) adapts it
to the federation, as ``medalloc_core.tasks.equipment`` adapts ``medalloc_core.equipment``.
"""
