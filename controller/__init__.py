"""plaza-ems site controller: the PLC-style scan cycle and its pure control steps."""
