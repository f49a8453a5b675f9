#!/usr/bin/env bash
# Set up and run the main job: the controller driving a simulated 40-charger plaza over real Modbus TCP
# (plaza-ems hil serves the devices on 127.0.0.1, plaza-ems run --config drives them). Ctrl-C stops
# both. Extra arguments go to `plaza-ems run` (e.g. --duration 600). SCENARIO/SITE choose another plaza.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec bash scripts/hil.sh "${SCENARIO:-examples/hil/plaza-40.scenario.yaml}" \
    "${SITE:-examples/sites/hil-plaza-40.site.yaml}" --stats-json var/plaza-ems/cycle-stats.json "$@"
