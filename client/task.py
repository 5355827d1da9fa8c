"""The hospital-side work of a forecasting round, free of Flower (moved to ``medalloc_core.tasks.forecasting.local``).

Kept so that ``medalloc.client.task`` imports go on working; new code imports the core module.
"""

from medalloc_core.tasks.forecasting.local import (
    LocalData,
    evaluate_local,
    load_local_data,
    test_forecasts,
)

__all__ = ["LocalData", "evaluate_local", "load_local_data", "test_forecasts"]
