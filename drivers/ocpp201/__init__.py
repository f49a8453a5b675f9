"""OCPP 2.0.1: the controller as CSMS of the charging stations."""
