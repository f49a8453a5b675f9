"""Simulated OCPP 2.0.1 charging stations for the HIL plaza (clients of the controller's CSMS)."""
