"""Simulated plaza: plant model, scenarios and the data they replay."""
