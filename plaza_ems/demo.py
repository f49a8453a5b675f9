"""``plaza-ems demo``: the whole system on one machine — broker, optimisers, simulated plaza, controller.

What a site looks like in the field, on 127.0.0.1: a mosquitto broker with TLS, passwords and the
deployment ACL (``hil.broker``, certificates from ``hil.pki``), ``--optimizers`` processes of
``plaza-ems optimizer`` sharing the snapshots, the scenario's plaza served over Modbus TCP by
``plaza-ems hil``, and the controller (``plaza-ems run --config``) on a copy of the site file with an
``mqtt`` section pointing at the broker. The controller runs in the foreground; when it ends (its
``--duration``, Ctrl-C or SIGTERM) every other process is stopped by its PID. Logs, the generated site
file, the optimiser config and the broker's files are in ``--work-dir``.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from hil.broker import DEPLOYMENT_ACL, MOSQUITTO, MOSQUITTO_PASSWD, SKIP_REASON, Broker

DEMO_ACL = DEPLOYMENT_ACL + "\nuser viewer\ntopic read plaza/v1/#\n"
"""The deployment's ACL, and a ``viewer`` who may watch everything."""
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", default="examples/hil/plaza-40.scenario.yaml")
    parser.add_argument("--site", default="examples/sites/hil-plaza-40.site.yaml")
    parser.add_argument("--optimizers", type=int, default=2, help="optimiser processes in the share group")
    parser.add_argument("--snapshot-interval-s", type=float, default=60.0, help="how often the site asks for a plan")
    parser.add_argument("--work-dir", default="var/demo")
    parser.add_argument("--state-dir", default="var/plaza-ems")


def write_site(site_path: Path, work: Path, broker: Broker, password_file: Path, snapshot_interval_s: float) -> Path:
    """The site file with an ``mqtt`` section for the demo broker."""
    site: dict[str, Any] = yaml.safe_load(site_path.read_text(encoding="utf-8"))
    site["mqtt"] = {
        "host": "127.0.0.1",
        "port": broker.port,
        "tls": {"ca_file": str(broker.pki.ca.cert.resolve())},
        "username": "site",
        "password_file": str(password_file.resolve()),
        "backoff_first_s": 0.5,
        "backoff_cap_s": 10.0,
        "snapshot_interval_s": snapshot_interval_s,
    }
    out = work / site_path.name
    out.write_text(yaml.safe_dump(site, sort_keys=False), encoding="utf-8")
    return out


def write_optimizer_config(work: Path, broker: Broker, password_file: Path) -> Path:
    config = {
        "broker": {
            "host": "127.0.0.1",
            "port": broker.port,
            "tls": {"ca_file": str(broker.pki.ca.cert.resolve())},
            "username": "optimizer",
            "password_file": str(password_file.resolve()),
        },
        "share_group": "optimizers",
        "peak_tariff_eur_kw": 3.0,
    }
    out = work / "optimizer.yaml"
    out.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return out


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM by PID, SIGKILL if it does not end in time."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


@contextlib.contextmanager
def _background(argv: Sequence[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(list(argv), stdout=log_file, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            _stop(process)


def _wait_ready(ready: Path, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready.exists():
        if process.poll() is not None:
            raise RuntimeError(f"the simulated plaza exited:\n{log_path.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the simulated plaza was not ready within {READY_TIMEOUT_S:g} s (log: {log_path})")
        time.sleep(0.1)


def main(args: argparse.Namespace) -> int:
    """Run the demo until the controller ends; the controller's exit status is the demo's."""
    if MOSQUITTO is None or MOSQUITTO_PASSWD is None:
        print(f"error: demo: {SKIP_REASON}", file=sys.stderr)
        return 2
    if args.optimizers < 1:
        print("error: demo: need --optimizers >= 1", file=sys.stderr)
        return 2
    work = Path(args.work_dir)
    shutil.rmtree(work / "broker", ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    passwords = {user: secrets.token_urlsafe(16) for user in ("site", "optimizer", "viewer")}
    for user, password in passwords.items():
        (work / f"{user}.pass").write_text(password + "\n", encoding="ascii")
    plaza_ems = [sys.executable, "-m", "plaza_ems.cli"]
    # SIGTERM (from a service manager or `kill`) ends the controller like Ctrl-C; the finally blocks
    # below then stop the rest.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    broker = Broker.start(work / "broker", users=passwords, acl=DEMO_ACL, pki_days=30)
    try:
        site = write_site(Path(args.site), work, broker, work / "site.pass", args.snapshot_interval_s)
        optimizer_config = write_optimizer_config(work, broker, work / "optimizer.pass")
        with contextlib.ExitStack() as stack:
            for n in range(1, args.optimizers + 1):
                stack.enter_context(
                    _background(
                        [*plaza_ems, "optimizer", "--config", str(optimizer_config)], work / f"optimizer-{n}.log"
                    )
                )
            ready = work / "hil.ready"
            ready.unlink(missing_ok=True)
            hil_log = work / "hil.log"
            hil = stack.enter_context(
                _background([*plaza_ems, "hil", args.scenario, "--ready-file", str(ready)], hil_log)
            )
            _wait_ready(ready, hil, hil_log)
            print(
                f"demo: broker 127.0.0.1:{broker.port} (TLS, CA {broker.pki.ca.cert}; watch with user 'viewer', "
                f"password in {work / 'viewer.pass'}), {args.optimizers} optimiser(s), plaza served; "
                f"logs in {work}. Starting the controller.",
                file=sys.stderr,
            )
            controller = subprocess.Popen(
                [*plaza_ems, "run", "--config", str(site), "--state-dir", args.state_dir, *args.options]
            )
            try:
                return controller.wait()
            except KeyboardInterrupt:
                _stop(controller)
                return 0
    finally:
        broker.stop()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
