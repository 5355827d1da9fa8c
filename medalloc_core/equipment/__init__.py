"""Medical equipment: failure risk of every device and the week's preventive-service plan (the second federated task).

``contract`` (file columns, event kinds), ``validation`` (check and load a fleet),
``synthetic``/``fleet_sim`` (generated fleets and their true failure process), ``features``
(device-day snapshots), ``model`` (the risk MLP, device-level DP-SGD), ``metrics``
(AUROC, Brier, calibration), ``baselines`` (age and interval rules), ``plan`` (the
technician-hours integer programme). See docs/equipment.md.
"""
