"""The MQTT v5 cloud link (SPEC F19): messages, outbox, connection."""
