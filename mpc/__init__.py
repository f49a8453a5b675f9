"""Cloud optimiser service: MPC charge plans with cvxpy + OSQP, published over MQTT."""
