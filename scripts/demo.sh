#!/usr/bin/env bash
# Set up and run the main job: the controller driving a simulated 40-connector plaza in real time.
# Stop it with Ctrl-C. Extra arguments go to `plaza-ems run` (e.g. --duration 600).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/plaza-ems run --scenario "${SCENARIO:-examples/load-spike.scenario.yaml}" \
    --state-dir var/plaza-ems --stats-json var/plaza-ems/cycle-stats.json "$@"
