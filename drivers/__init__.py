"""Protocol adapters (Modbus TCP, OCPP 2.0.1, OPC UA, MQTT) behind the controller's input/output seams."""
