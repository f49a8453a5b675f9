"""plaza-ems application: the command line and the wiring of controller, drivers and simulator."""
