"""The main job, ``plaza-ems demo``, as a user runs it: broker, optimiser, Modbus plaza and controller.

Small plaza (``hil-small`` over Modbus TCP on 127.0.0.1), one optimiser, a snapshot every 3 s, 30 s in
all: the controller accepts the optimiser's plans, the optimiser logs its stop (it was stopped by
SIGTERM, not left behind) and the broker's port is closed again afterwards.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hil.broker import MOSQUITTO, SKIP_REASON

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason=SKIP_REASON)]


def test_demo_runs_the_controller_on_the_optimisers_plans_and_stops_everything(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    done = subprocess.run(
        [
            sys.executable, "-m", "plaza_ems.cli", "demo",
            "--scenario", "examples/hil/spike.scenario.yaml", "--site", "examples/sites/hil-small.site.yaml",
            "--optimizers", "1", "--snapshot-interval-s", "3", "--work-dir", str(work),
            "--state-dir", str(tmp_path / "state"), "--duration", "30",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    accepted = re.findall(r"plan (\S+) accepted", done.stderr)
    assert len(accepted) >= 2, done.stderr[-3000:]
    optimizer_log = (work / "optimizer-1.log").read_text(encoding="utf-8")
    # Every plan the controller took is one this optimiser solved (and logged), and it stopped cleanly.
    assert all(f"plan {plan_id} (" in optimizer_log for plan_id in accepted), optimizer_log[-3000:]
    assert re.search(r"stopped: connected=\w+ received=\d+ solved=(\d+)", optimizer_log), optimizer_log[-3000:]
    site = yaml.safe_load((work / "hil-small.site.yaml").read_text(encoding="utf-8"))
    port = site["mqtt"]["port"]
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1.0):
        pass
