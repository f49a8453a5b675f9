#!/usr/bin/env bash
# Set up and run the main job: the whole system on 127.0.0.1 — a mosquitto broker (TLS, passwords,
# ACL), two cloud optimiser processes sharing the snapshots, a simulated 40-charger plaza over real
# Modbus TCP and the controller driving it with the optimiser's plans (plaza-ems demo). Ctrl-C stops
# everything. Extra arguments go to `plaza-ems run` (e.g. --duration 600); SCENARIO/SITE choose another
# plaza. Logs and generated files: var/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/plaza-ems demo --scenario "${SCENARIO:-examples/hil/plaza-40.scenario.yaml}" \
    --site "${SITE:-examples/sites/hil-plaza-40.site.yaml}" "$@" --stats-json var/plaza-ems/cycle-stats.json
