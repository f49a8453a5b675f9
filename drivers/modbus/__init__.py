"""Modbus TCP device drivers: register maps as data, codec, and — later — the polling client."""
