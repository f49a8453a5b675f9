"""``plaza-ems bench ocpp``: the controller as CSMS of N simulated OCPP 2.0.1 stations, on the wire.

A site file and a scenario are generated into a working directory: a 4-level tree (grid → boards of up
to 50 stations → rows of up to 10 → one 32 A node per station; every fourth station has two sockets
sharing its 32 A) whose fuses bind at every level (rows at 80 %, boards at 70 %, the grid at 60 % of the
32 A per station below them), a 1 s scan period, meter values every 10 s, and every connector getting an
EV within the first 10 s that stays past the end of the run (every tenth one swipes an RFID badge of
``priorities.users``). There are no Modbus devices: the stations are the whole field.

The controller runs as its own process (``plaza-ems run --config``, its log in the working directory);
this process serves the HIL plaza (the plant and one ``SimStation`` per station, ticked every 0.1 s)
for the duration, then stops the controller by its PID (SIGTERM, SIGKILL after 10 s) and reads the
statistics it writes at exit. Everything listens and connects on 127.0.0.1 only. The figures are what
the controller reports (cycles, overruns, CSMS-side TransactionEvent response times) plus what this
process sees: stations connected at once (sampled every tick), station-side round trips, TxProfiles
accepted, the controller's peak RSS and both processes' CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from controller.config import ConfigError, load_config
from controller.scan import percentile
from drivers.ocpp201.stations import compile_stations

log = logging.getLogger("plaza_ems.bench")

TICK_S = 0.1
STATION_A = 32.0
ROW_SIZE = 10
BOARD_SIZE = 50
ROW_SHARE, BOARD_SHARE, GRID_SHARE = 0.8, 0.7, 0.6
ARRIVALS_OVER_S = 10.0
LISTEN_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
ROTATIONS = ("L1L2L3", "L2L3L1", "L3L1L2")
USERS = (
    {"id_token": "FLEET-0001", "name": "fleet van 1", "priority": 5},
    {"id_token": "FLEET-0002", "name": "fleet van 2", "priority": 5},
    {"id_token": "STAFF-0001", "name": "staff", "priority": 3},
    {"id_token": "GUEST-0001", "name": "guest", "priority": 1},
)


class BenchError(Exception):
    """The benchmark could not measure what it should (the controller died, stations did not connect...)."""


def station_id(index: int) -> str:
    return f"CS{index + 1:04d}"


def bench_site(stations: int, port: int) -> dict[str, Any]:
    """The site file (as data) for ``stations`` OCPP stations on 127.0.0.1:``port``."""
    devices: list[dict[str, Any]] = []
    boards: list[dict[str, Any]] = []
    connector_count = 0
    for b_start in range(0, stations, BOARD_SIZE):
        rows: list[dict[str, Any]] = []
        for r_start in range(b_start, min(stations, b_start + BOARD_SIZE), ROW_SIZE):
            nodes: list[dict[str, Any]] = []
            for index in range(r_start, min(stations, r_start + ROW_SIZE, b_start + BOARD_SIZE)):
                sid = station_id(index)
                sockets = 2 if index % 4 == 3 else 1
                connectors = []
                for k in range(sockets):
                    connectors.append(
                        {
                            "id": f"{sid.lower()}-{k + 1}",
                            "phases": ROTATIONS[connector_count % len(ROTATIONS)],
                            "max_current_a": STATION_A,
                            "fallback_current_a": STATION_A,
                            "response_delay_s": 1,
                        }
                    )
                    connector_count += 1
                nodes.append({"id": f"n-{sid.lower()}", "limit_a": STATION_A, "connectors": connectors})
                devices.append(
                    {
                        "id": sid,
                        "driver": "ocpp201",
                        "connectors": [c["id"] for c in connectors],
                        "options": {"password": f"bench-{sid.lower()}-secret"},
                    }
                )
            row_id = f"row-{len(boards) + 1}-{len(rows) + 1}"
            rows.append({"id": row_id, "limit_a": _share(len(nodes), ROW_SHARE), "children": nodes})
        below = min(stations, b_start + BOARD_SIZE) - b_start
        boards.append({"id": f"board-{len(boards) + 1}", "limit_a": _share(below, BOARD_SHARE), "children": rows})
    return {
        "site": {"id": "bench-ocpp", "name": f"bench: {stations} OCPP 2.0.1 stations"},
        "scan": {"period_ms": 1000, "stale_after_ms": 3000},
        "priorities": {"users": list(USERS)},
        "ocpp": {
            "host": "127.0.0.1",
            "port": port,
            "tx_updated_interval_s": 10,
            "heartbeat_interval_s": 60,
            "profile_min_interval_s": 5,
            "call_timeout_s": 5,
            "unknown_id_tokens": "reject",
        },
        "tree": {"id": "grid", "limit_a": _share(stations, GRID_SHARE), "children": boards},
        "devices": devices,
    }


def _share(stations: int, share: float) -> float:
    return float(round(stations * STATION_A * share))


def bench_scenario(site_file: str, site: dict[str, Any], duration_s: float) -> dict[str, Any]:
    """Every connector gets an EV within the first 10 s; all stay until well after the run."""
    connectors = [c for device in site["devices"] for c in device["connectors"]]
    sessions: list[dict[str, Any]] = []
    for index, connector in enumerate(connectors):
        session: dict[str, Any] = {
            "connector": connector,
            "arrive_s": round(index * ARRIVALS_OVER_S / len(connectors), 3),
            "depart_s": duration_s + 600.0,
            "energy_kwh": 40,
            "max_current_a": 16.0 if index % 5 == 2 else 32.0,
            "phases": 1 if index % 7 == 3 else 3,
        }
        if index % 10 == 0:
            session["id_token"] = USERS[(index // 10) % len(USERS)]["id_token"]
        sessions.append(session)
    return {
        "name": "bench-ocpp",
        "site": site_file,
        "start": "2023-03-14T05:00:00Z",
        "duration_s": duration_s + 600.0,
        "evs": {"sessions": sessions},
    }


def write_bench_files(workdir: Path, stations: int, duration_s: float, port: int) -> tuple[Path, Path]:
    """Write the site file and the scenario into ``workdir``; the site file is checked by the site loader."""
    site = bench_site(stations, port)
    site_path = workdir / "bench-ocpp.site.yaml"
    site_path.write_text(yaml.safe_dump(site, sort_keys=False), encoding="utf-8")
    loaded = load_config(site_path)
    issues = compile_stations(loaded.config)[1]
    if issues:
        raise ConfigError(issues, str(site_path))
    scenario_path = workdir / "bench-ocpp.scenario.yaml"
    scenario = bench_scenario(site_path.name, site, duration_s)
    scenario_path.write_text(yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8")
    return site_path, scenario_path


def bench_ocpp(
    stations: int = 200, duration_s: float = 120.0, port: int = 19900, workdir: Path | None = None
) -> dict[str, Any]:
    """Run the benchmark; the figures as a dict. Raises BenchError when it cannot measure."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(_bench(stations, duration_s, port, workdir))
    with tempfile.TemporaryDirectory(prefix="plaza-ems-bench-ocpp-") as tmp:
        try:
            return asyncio.run(_bench(stations, duration_s, port, Path(tmp)))
        except BenchError as err:
            raise BenchError(f"{err}\n(the working directory is removed; --work-dir DIR keeps it)") from err


async def _bench(stations: int, duration_s: float, port: int, workdir: Path) -> dict[str, Any]:
    from hil.scenario import load_scenario
    from plaza_ems.hilrun import HilPlaza

    _check_port_free(port)
    site_path, scenario_path = write_bench_files(workdir, stations, duration_s, port)
    scenario = load_scenario(scenario_path)
    stats_path = workdir / "stats.json"
    log_path = workdir / "controller.log"
    controller = _start_controller(site_path, workdir, stats_path, log_path)
    plaza: HilPlaza | None = None
    try:
        await _wait_listening(controller, port, log_path)
        # Built now: the scenario's second 0 is the moment the stations start connecting.
        plaza = HilPlaza(scenario)
        await plaza.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        cpu_started = _own_cpu_s()
        controller_cpu_started = _process_cpu_s(controller.pid)
        connected_max = 0
        tick_s: list[float] = []
        late_max_s = 0.0
        next_tick = started
        while loop.time() - started < duration_s:
            if controller.poll() is not None:
                raise BenchError(
                    f"the controller exited with code {controller.returncode} after "
                    f"{loop.time() - started:.1f} s{_log_tail(log_path)}"
                )
            late_max_s = max(late_max_s, loop.time() - next_tick)
            t0 = time.perf_counter()
            plaza.tick()
            tick_s.append(time.perf_counter() - t0)
            connected_max = max(connected_max, sum(1 for s in plaza.stations.values() if s.link is not None))
            next_tick += TICK_S
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
        wall_s = loop.time() - started
        bench_cpu_s = _own_cpu_s() - cpu_started
        controller_cpu_now = _process_cpu_s(controller.pid)
        controller_cpu_s = (
            controller_cpu_now - controller_cpu_started
            if controller_cpu_now is not None and controller_cpu_started is not None
            else None
        )
        rss_mb = _peak_rss_mb(controller.pid)
        exit_code = await _stop_controller(controller)
    finally:
        if controller.poll() is None:
            # An exception or Ctrl-C above: the controller must not outlive the benchmark.
            try:
                await _stop_controller(controller)
            finally:
                if controller.poll() is None:
                    controller.kill()
                    controller.wait()
        if plaza is not None:
            await plaza.stop()
    sims = list(plaza.stations.values())
    ever = sum(1 for s in sims if s.connects > 0)
    if ever < stations:
        never = [s.id for s in sims if s.connects == 0]
        raise BenchError(
            f"only {ever} of {stations} stations ever connected (never: {', '.join(never[:10])}"
            f"{' ...' if len(never) > 10 else ''}){_log_tail(log_path)}"
        )
    try:
        stats = _json_load(stats_path)
    except (OSError, ValueError) as err:
        raise BenchError(f"no statistics from the controller ({stats_path}: {err}){_log_tail(log_path)}") from err
    ocpp = stats.get("ocpp", {})
    per_station = ocpp.get("stations", {}).values()
    roundtrips = [x for s in sims for x in s.te_roundtrip_s]
    return {
        "stations": stations,
        "connectors": sum(len(s.evses) for s in sims),
        "connected_max": connected_max,
        "booted": sum(1 for s in sims if s.booted),
        "duration_s": round(wall_s, 1),
        "scan_period_ms": stats.get("period_ms"),
        "cycles": stats.get("cycles"),
        "overruns": stats.get("overruns"),
        "cycle_p99_ms": _r(stats.get("cycle_p99_ms")),
        "logic_p99_ms": _r(stats.get("logic_p99_ms")),
        "jitter_p99_ms": _r(stats.get("jitter_p99_ms")),
        "jitter_max_ms": _r(stats.get("jitter_max_ms")),
        "transaction_events": ocpp.get("transaction_events"),
        "te_response_p50_ms": ocpp.get("transaction_event_response_p50_ms"),
        "te_response_p99_ms": ocpp.get("transaction_event_response_p99_ms"),
        "te_roundtrip_p50_ms": _ms(percentile(roundtrips, 50)) if roundtrips else None,
        "te_roundtrip_p99_ms": _ms(percentile(roundtrips, 99)) if roundtrips else None,
        "te_roundtrips": len(roundtrips),
        "tx_profiles_sent": sum(len(e.profile_limits) for s in sims for e in s.evses),
        "csms_calls": sum(int(s.get("calls", 0)) for s in per_station),
        "csms_call_errors": sum(int(s.get("errors", 0)) for s in per_station),
        "csms_timeouts": sum(int(s.get("timeouts", 0)) for s in per_station),
        "station_call_errors": sum(s.call_errors for s in sims),
        "connects": ocpp.get("connects"),
        "controller_rss_mb": rss_mb,
        "controller_cpu_pct": round(100.0 * controller_cpu_s / wall_s, 1) if controller_cpu_s is not None else None,
        "bench_cpu_pct": round(100.0 * bench_cpu_s / wall_s, 1),
        "bench_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "plaza_tick_p99_ms": _ms(percentile(tick_s, 99)),
        "plaza_tick_late_max_ms": _ms(late_max_s),
        "controller_exit": exit_code,
    }


def _json_load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _r(value: Any) -> float | None:
    return round(float(value), 3) if isinstance(value, int | float) else None


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as err:
            raise BenchError(f"port 127.0.0.1:{port} is not free ({err.strerror}); choose another with --port") from err


def _start_controller(site: Path, workdir: Path, stats: Path, log_path: Path) -> subprocess.Popen[bytes]:
    args = [
        sys.executable,
        "-m",
        "plaza_ems.cli",
        "run",
        "--config",
        str(site),
        "--state-dir",
        str(workdir / "state"),
        "--stats-json",
        str(stats),
    ]
    with log_path.open("wb") as stderr:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)


async def _wait_listening(controller: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    """Until the CSMS accepts TCP connections on 127.0.0.1:port (bounded)."""
    deadline = time.monotonic() + LISTEN_TIMEOUT_S
    while True:
        if controller.poll() is not None:
            raise BenchError(f"the controller exited with code {controller.returncode} at start{_log_tail(log_path)}")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout=1.0)
        except (OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise BenchError(
                    f"the controller's CSMS did not listen on 127.0.0.1:{port} within {LISTEN_TIMEOUT_S:.0f} s"
                    f"{_log_tail(log_path)}"
                ) from None
            await asyncio.sleep(0.1)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


async def _stop_controller(controller: subprocess.Popen[bytes]) -> int:
    """SIGTERM by PID, SIGKILL after STOP_TIMEOUT_S; the exit code. The event loop keeps running meanwhile,
    so the stations answer the closing handshakes."""
    if controller.poll() is None:
        os.kill(controller.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while controller.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110 - a Popen exit is polled
        await asyncio.sleep(0.05)
    if controller.poll() is None:
        log.warning("the controller did not stop within %.0f s of SIGTERM: killed", STOP_TIMEOUT_S)
        os.kill(controller.pid, signal.SIGKILL)
        controller.wait()
    return controller.returncode


def _peak_rss_mb(pid: int) -> float | None:
    """VmHWM (peak resident set) of a running process, MiB; None where /proc has no such line."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a running process (from /proc/PID/stat)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _log_tail(log_path: Path, lines: int = 15) -> str:
    try:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    if not tail:
        return f" (controller log {log_path} is empty)"
    return f"; last lines of the controller log ({log_path}):\n" + "\n".join(f"  {line}" for line in tail)


def format_table(result: dict[str, Any]) -> str:
    """The figures as a readable two-column table."""
    width = max(len(k) for k in result)
    lines = []
    for key, value in result.items():
        text = "-" if value is None else (f"{value:g}" if isinstance(value, float) and math.isfinite(value) else value)
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)
