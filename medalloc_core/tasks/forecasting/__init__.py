"""The forecasting task: demand forecasting on the federated task interface (source release + training)."""
