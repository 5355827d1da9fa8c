"""From forecasts to decisions: newsvendor bed/staff plans, regional LP, an RL environment."""
