"""Sensor drivers and synthetic sources: each publishes timestamped frames."""
