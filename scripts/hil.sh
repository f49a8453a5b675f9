#!/usr/bin/env bash
# Serve a scenario's simulated plaza over Modbus TCP (plaza-ems hil) and run the controller on the
# site file that points at it (plaza-ems run --config). The simulator is stopped by its PID when the
# controller ends (--duration, Ctrl-C or SIGTERM).
#   usage: scripts/hil.sh SCENARIO SITE [plaza-ems run options...]
set -euo pipefail
cd "$(dirname "$0")/.."
scenario="$1"; site="$2"; shift 2
mkdir -p var/plaza-ems
ready="var/plaza-ems/hil.ready"
rm -f "$ready"
.venv/bin/plaza-ems hil "$scenario" --ready-file "$ready" > var/plaza-ems/hil.log 2>&1 &
hil_pid=$!
trap 'kill "$hil_pid" 2>/dev/null || true; wait "$hil_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    [ -f "$ready" ] && break
    if ! kill -0 "$hil_pid" 2>/dev/null; then
        echo "the simulated plaza did not start:" >&2; cat var/plaza-ems/hil.log >&2; exit 1
    fi
    sleep 0.1
done
[ -f "$ready" ] || { echo "the simulated plaza did not become ready in 10 s" >&2; exit 1; }
echo "simulated plaza serving (log: var/plaza-ems/hil.log); starting the controller" >&2
.venv/bin/plaza-ems run --config "$site" --state-dir var/plaza-ems "$@"
