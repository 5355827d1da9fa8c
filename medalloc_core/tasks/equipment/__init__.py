"""The equipment task: device failure risk on the federated task interface (device-level DP-SGD)."""
