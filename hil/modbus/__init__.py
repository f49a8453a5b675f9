"""Simulated Modbus TCP devices for the HIL plaza."""
