"""The ``plaza-ems`` command: exit codes, messages by path, no tracebacks, JSON outputs, the command inbox."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from controller.image import LatchReset
from plaza_ems.cli import main
from plaza_ems.inbox import COMMANDS_FILE, CommandInbox, post_reset

ROOT = Path(__file__).resolve().parent.parent
SITES = ROOT / "examples" / "sites"
PLAZA_40 = SITES / "plaza-40.site.yaml"
SMALL = SITES / "small.site.yaml"
INVALID = SITES / "invalid.site.yaml"


def scenario_text(*, name: str = "tiny", site: Path = SMALL, duration_s: int = 600, body: str = "") -> str:
    return f'name: {name}\nsite: {site}\nstart: "2023-05-08T10:00:00Z"\nduration_s: {duration_s}\n{body}'


def write_scenario(tmp_path: Path, body: str = "", **kwargs: Any) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(scenario_text(body=body, **kwargs), encoding="utf-8")
    return path


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plaza_ems.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- check-config -----------------------------------------------------------------------------------


def test_check_config_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(PLAZA_40)]) == 0
    out, err = capsys.readouterr()
    assert "OK" in out
    assert "plaza-40" in out
    assert "40 connectors" in out
    assert err == ""


def test_check_config_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(PLAZA_40), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == {
        "site",
        "valid",
        "levels",
        "nodes",
        "connectors",
        "ac_connectors",
        "dc_connectors",
        "meters",
        "batteries",
        "devices",
        "warnings",
    }
    assert summary["site"] == "plaza-40"
    assert summary["valid"] is True
    assert summary["levels"] == 5
    assert (summary["connectors"], summary["ac_connectors"], summary["dc_connectors"]) == (40, 40, 0)
    # The example file is edited by others; counts that may grow are only checked for plausibility.
    assert summary["nodes"] >= 28
    assert summary["meters"] >= 1
    assert summary["batteries"] >= 1
    assert isinstance(summary["warnings"], list)


def test_check_config_json_small_site_counts_dc(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(SMALL), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["levels"] == 2
    assert summary["connectors"] == 5
    assert (summary["ac_connectors"], summary["dc_connectors"]) == (4, 1)


def test_check_config_invalid_names_field_paths(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(INVALID)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "invalid site configuration (7 problem(s))" in err
    for path in (
        "site.timezone:",
        "tree.grid.children[0].meter:",
        "tree.grid.children[0].connectors[0].phases:",
        "tree.grid.children[0].connectors[1].min_current_a:",
        "tree.grid.children[1].id:",
        "tree.grid.children[1].connectors[0].max_power_kw:",
        "batteries[0].node:",
    ):
        assert path in err
    assert "Traceback" not in err


def test_check_config_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["check-config", str(tmp_path / "nope.yaml")]) == 1
    err = capsys.readouterr().err
    assert "cannot read file" in err
    assert "Traceback" not in err


def test_check_config_directory_instead_of_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["check-config", str(tmp_path)]) == 1
    assert "cannot read file" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["check-config"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["reset-latch", "sprinkler", "--operator", "x"])
    assert exc.value.code == 2
    capsys.readouterr()


# -- as a real process: no traceback ever ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["check-config", str(PLAZA_40)], 0, "OK"),
        (["check-config", str(INVALID)], 1, "site.timezone:"),
        (["check-config", "does/not/exist.yaml"], 1, "cannot read file"),
        (["sim", "does/not/exist.yaml"], 1, "cannot read file"),
        (["bench", "scan", "--levels", "6"], 2, "--levels 1..5"),
    ],
)
def test_subprocess_exit_codes_without_traceback(args: list[str], code: int, needle: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == code, proc.stderr
    assert needle in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_subprocess_invalid_scenario_without_traceback(tmp_path: Path) -> None:
    path = write_scenario(
        tmp_path,
        "events:\n  - {at_s: 10, type: load_spike, load: building, extra_kw: .nan, duration_s: 5}\n",
    )
    proc = run_cli("sim", str(path))
    assert proc.returncode == 1
    assert "extra_kw" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["check-config", "sim"])
def test_file_that_is_not_utf8_is_reported_not_a_traceback(tmp_path: Path, command: str) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"site:\n  id: caf\xe9\n")
    proc = run_cli(command, str(path))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr


def test_reset_latch_state_dir_is_a_file_is_reported_not_a_traceback(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "state"
    not_a_dir.write_text("", encoding="utf-8")
    proc = run_cli("reset-latch", "fire", "--operator", "alice", "--state-dir", str(not_a_dir))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr


# -- scenarios that refer to ids the site does not have ----------------------------------------------


@pytest.mark.parametrize(
    ("body", "path", "message"),
    [
        (
            "evs:\n  sessions:\n    - {connector: cp9-9, arrive_s: 0, depart_s: 100, energy_kwh: 1}\n",
            "evs.sessions[0].connector",
            "unknown connector 'cp9-9'",
        ),
        (
            "events:\n  - {at_s: 10, type: meter_silent, meter: m_nope, duration_s: 5}\n",
            "events[0].meter",
            "unknown meter 'm_nope'",
        ),
        (
            "events:\n  - {at_s: 1, type: meter_silent, meter: m_grid, duration_s: 5}\n"
            "  - {at_s: 10, type: meter_nan, meter: m_nope, duration_s: 5}\n",
            "events[1].meter",
            "unknown meter 'm_nope'",
        ),
        (
            "events:\n  - {at_s: 10, type: load_spike, load: building, extra_kw: 5, duration_s: 5}\n",
            "events[0].load",
            "unknown building load or PV 'building'",
        ),
        (
            "loads:\n  building: {constant_kw: 5}\n",
            "loads.building",
            "unknown building load or PV 'building'",
        ),
        (
            "events:\n  - {at_s: 10, type: charger_silent, connector: zz, duration_s: 5}\n",
            "events[0].connector",
            "unknown connector 'zz'",
        ),
        (
            "chargers:\n  cp1-9: {response_delay_s: 1}\n",
            "chargers.cp1-9",
            "unknown connector 'cp1-9'",
        ),
        (
            "events:\n  - {at_s: 10, type: fire_alarm}\n",
            "events[0]",
            "unknown input: the site declares no 'fire'",
        ),
        (
            "events:\n  - {at_s: 700, type: meter_silent, meter: m_grid, duration_s: 5}\n",
            "events[0].at_s",
            "is after the end of the scenario",
        ),
        (
            "events:\n  - {at_s: 10, type: dso_stage, pct: 30}\n",
            "events[0]",
            "unknown input: the site declares no 'dso'",
        ),
    ],
)
def test_sim_unknown_ids_are_named_by_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, body: str, path: str, message: str
) -> None:
    scenario = write_scenario(tmp_path, body)
    assert main(["sim", str(scenario)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{path}: {message}" in err
    assert "invalid scenario" in err


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (
            "events:\n  - {at_s: 10, type: load_spike, load: building, extra_kw: .nan, duration_s: 5}\n",
            "events[0].extra_kw",
        ),
        (
            "evs:\n  sessions:\n    - {connector: cp1-1, arrive_s: 0, depart_s: 100, energy_kwh: .nan}\n",
            "evs.sessions[0].energy_kwh",
        ),
        (
            "evs:\n  sessions:\n    - {connector: cp1-1, arrive_s: .inf, depart_s: 100, energy_kwh: 1}\n",
            "evs.sessions[0].arrive_s",
        ),
        ("connection_limit_a: .nan\n", "connection_limit_a"),
    ],
)
def test_sim_nan_values_are_rejected(capsys: pytest.CaptureFixture[str], tmp_path: Path, body: str, path: str) -> None:
    scenario = write_scenario(tmp_path, body)
    assert main(["sim", str(scenario)]) == 1
    err = capsys.readouterr().err
    assert "invalid scenario" in err
    assert f"{path}: must be a finite number" in err


def test_sim_invalid_site_inside_scenario_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, site=INVALID)
    assert main(["sim", str(scenario)]) == 1
    assert "site.timezone:" in capsys.readouterr().err


def test_sim_missing_site_file_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, site=tmp_path / "gone.site.yaml")
    assert main(["sim", str(scenario)]) == 1
    assert "cannot read site file" in capsys.readouterr().err


# -- sim ----------------------------------------------------------------------------------------------------

TWO_EVS = (
    "evs:\n"
    "  sessions:\n"
    "    - {connector: cp1-1, arrive_s: 0, depart_s: 500, energy_kwh: 5}\n"
    "    - {connector: cp2-1, arrive_s: 60, depart_s: 600, energy_kwh: 3, phases: 1, max_current_a: 16}\n"
)


def sim_json(capsys: pytest.CaptureFixture[str], scenario: Path, *extra: str) -> dict[str, Any]:
    assert main(["sim", str(scenario), "--json", *extra]) == 0
    out = capsys.readouterr().out
    result: dict[str, Any] = json.loads(out)
    return result


def test_sim_json_documented_keys(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    result = sim_json(capsys, write_scenario(tmp_path, TWO_EVS))
    for key in (
        "scenario",
        "simulated_s",
        "wall_s",
        "cycles",
        "nodes",
        "max_overload_a",
        "overload_s",
        "energy_requested_kwh",
        "energy_deliverable_kwh",
        "energy_delivered_kwh",
        "sessions_total",
        "sessions_met_target",
        "fire_response_cycles",
        "peak_import_kw",
        "cost_eur",
        "cycle",
    ):
        assert key in result, key
    assert result["scenario"] == "tiny"
    assert result["simulated_s"] == 600.0
    assert result["cycles"] == 600
    assert [n["id"] for n in result["nodes"]] == ["grid", "cp1", "cp2", "dc1"]
    for node in result["nodes"]:
        assert set(node) >= {"id", "limit_a", "max_current_a", "overload_s"}
        assert len(node["max_current_a"]) == 3
    assert {n["id"]: n["limit_a"] for n in result["nodes"]} == {"grid": 315.0, "cp1": 32.0, "cp2": 32.0, "dc1": 250.0}
    assert set(result["cycle"]) >= {"period_ms", "logic_p50_ms", "logic_p99_ms", "overruns"}
    assert result["cycle"]["period_ms"] == 1000.0
    assert result["cycle"]["overruns"] == 0
    assert result["sessions_total"] == 2
    assert result["energy_requested_kwh"] == pytest.approx(8.0)
    # Deliverable: 22.08 kW x 500 s for the first EV, 3.68 kW x 540 s for the second (1 phase, 16 A).
    deliverable_kwh = 32 * 3 * 230 * 500 / 3.6e6 + 16 * 230 * 540 / 3.6e6
    assert result["energy_deliverable_kwh"] == pytest.approx(deliverable_kwh, abs=1e-3)
    assert 0.0 < result["energy_delivered_kwh"] <= result["energy_deliverable_kwh"]
    assert 0 <= result["sessions_met_target"] <= 2
    assert result["fire_response_cycles"] is None
    assert result["overload_s"] == 0.0
    assert result["max_overload_a"] <= 0.0
    assert result["peak_import_kw"] > 0.0
    assert result["cost_eur"] >= 0.0


def test_sim_human_readable(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["sim", str(write_scenario(tmp_path, TWO_EVS))]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tiny: ")
    assert "600 cycles" in out


def test_sim_control_none_and_fire_response(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    site = tmp_path / "fire.site.yaml"
    site.write_text(SMALL.read_text(encoding="utf-8") + "\nfire_panel: {id: fire}\n", encoding="utf-8")
    scenario = write_scenario(
        tmp_path, TWO_EVS + "events:\n  - {at_s: 120, type: fire_alarm}\n", site=site, duration_s=180
    )
    ems = sim_json(capsys, scenario)
    assert ems["control"] == "ems"
    assert ems["fire_response_cycles"] == 1
    none = sim_json(capsys, scenario, "--control", "none")
    assert none["control"] == "none"
    assert none["fire_response_cycles"] is None
    assert none["cycle"]["logic_p99_ms"] == 0.0
    # Flat out, the shared 32 A charge-point breaker cp1 is not at risk with one EV, but more energy flows.
    assert none["energy_delivered_total_kwh"] >= ems["energy_delivered_total_kwh"]


def test_sim_overload_s_counts_seconds_over_a_dso_reduced_limit(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    body = (
        "loads:\n  building: {constant_kw: 0}\n  pv-roof: {constant_kw: 0}\n"
        "evs:\n  sessions:\n"
        "    - {connector: cp01-1, arrive_s: 0, depart_s: 120, energy_kwh: 30}\n"
        "    - {connector: cp02-1, arrive_s: 0, depart_s: 120, energy_kwh: 30}\n"
        "events:\n  - {at_s: 30, type: dso_stage, pct: 0}\n"
    )
    # Without control (every charger flat out) the two EVs stay within every fuse, but from t=30 s the DSO
    # box allows 0 % at the grid node: from then until the EVs leave, the grid node is over its limit in force.
    result = sim_json(capsys, write_scenario(tmp_path, body, site=PLAZA_40, duration_s=120), "--control", "none")
    over = {n["id"]: n["overload_s"] for n in result["nodes"] if n["overload_s"] > 0.0}
    assert set(over) == {"grid"}
    assert over["grid"] >= 80.0
    assert result["overload_s"] == over["grid"]


# -- bench ------------------------------------------------------------------------------------------------


def test_bench_scan_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "scan", "--connectors", "20", "--levels", "3", "--cycles", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["connectors"] == 20
    assert result["levels"] == 3
    assert result["cycles"] == 20
    assert result["logic_p99_ms"] >= result["logic_p50_ms"] > 0.0
    assert result["logic_max_ms"] >= result["logic_p99_ms"]


@pytest.mark.parametrize(
    "args",
    [
        ["--levels", "6"],
        ["--levels", "0"],
        ["--connectors", "0"],
        ["--cycles", "0"],
    ],
)
def test_bench_scan_bad_usage_exits_2(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    assert main(["bench", "scan", "--connectors", "4", "--cycles", "2", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "--levels 1..5" in err


# -- reset-latch and the command inbox -----------------------------------------------------------------------


def test_reset_latch_is_read_by_an_inbox_started_before(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    inbox = CommandInbox(tmp_path)
    assert inbox.poll(1.0) == []
    assert main(["reset-latch", "fire", "--operator", "alice", "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "alice" in out
    assert str(tmp_path / COMMANDS_FILE) in out
    lines = (tmp_path / COMMANDS_FILE).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    item = json.loads(lines[0])
    assert (item["cmd"], item["latch"], item["operator"]) == ("reset_latch", "fire", "alice")
    assert datetime.fromisoformat(item["at"]).tzinfo is not None
    assert inbox.poll(2.0) == [LatchReset("fire", "alice", 2.0)]
    assert inbox.poll(3.0) == []  # read once only


def test_inbox_started_after_the_post_ignores_history(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["reset-latch", "emergency_stop", "--operator", "bob", "--state-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    inbox = CommandInbox(tmp_path)
    assert inbox.poll(1.0) == []
    assert main(["reset-latch", "fire", "--operator", "carol", "--state-dir", str(tmp_path)]) == 0
    assert inbox.poll(2.0) == [LatchReset("fire", "carol", 2.0)]


def test_reset_latch_creates_the_state_dir(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    state = tmp_path / "a" / "b"
    assert main(["reset-latch", "fire", "--operator", "alice", "--state-dir", str(state)]) == 0
    assert (state / COMMANDS_FILE).exists()
    capsys.readouterr()


def test_inbox_skips_malformed_lines_and_reads_the_rest(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    inbox = CommandInbox(tmp_path)
    good = {"cmd": "reset_latch", "latch": "fire", "operator": "alice", "at": "2024-01-01T00:00:00+00:00"}
    lines = [
        "{not json",
        json.dumps({"cmd": "reset_latch", "latch": "sprinkler", "operator": "x"}),
        json.dumps({"cmd": "reset_latch", "latch": "fire"}),  # no operator
        json.dumps({"cmd": "reset_latch", "latch": "fire", "operator": "   "}),
        json.dumps({"cmd": "open_the_pod_bay_doors"}),
        "[1, 2, 3]",
        "null",
        "",
        json.dumps(good),
        json.dumps({**good, "latch": "emergency_stop", "operator": " bob "}),
    ]
    with (tmp_path / COMMANDS_FILE).open("a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    with caplog.at_level(logging.INFO, logger="plaza_ems.inbox"):
        resets = inbox.poll(5.0)
    assert resets == [LatchReset("fire", "alice", 5.0), LatchReset("emergency_stop", "bob", 5.0)]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 8
    assert all("ignoring malformed command line" in r.getMessage() for r in errors)
    assert inbox.poll(6.0) == []


def test_inbox_skips_invalid_utf8(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    inbox = CommandInbox(tmp_path)
    with (tmp_path / COMMANDS_FILE).open("ab") as handle:
        handle.write(b'{"cmd": "reset_latch", "latch": "fire", "operator": "\xff"}\n')
    post_reset(tmp_path, "fire", "alice", datetime(2024, 1, 1, tzinfo=UTC))
    with caplog.at_level(logging.ERROR, logger="plaza_ems.inbox"):
        assert inbox.poll(1.0) == [LatchReset("fire", "alice", 1.0)]
    assert len(caplog.records) == 1


def test_inbox_waits_for_a_line_to_be_complete(tmp_path: Path) -> None:
    inbox = CommandInbox(tmp_path)
    line = json.dumps({"cmd": "reset_latch", "latch": "fire", "operator": "alice"}) + "\n"
    path = tmp_path / COMMANDS_FILE
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line[:20])
    assert inbox.poll(1.0) == []
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line[20:])
    assert inbox.poll(2.0) == [LatchReset("fire", "alice", 2.0)]


def test_reset_latch_refuses_a_blank_operator(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["reset-latch", "fire", "--operator", "  ", "--state-dir", str(tmp_path)])
    capsys.readouterr()
    assert code != 0


def test_check_config_reports_driver_problems_by_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (ROOT / "examples" / "sites" / "hil-small.site.yaml").read_text(encoding="utf-8")
    text = text.replace("driver: alfen_ng9xx, port: 15031", "driver: alfen_ng9000, port: 15031")
    text = text.replace("options: {validity_s: 30}}\n  - id: io", "options: {validity_s: -1}}\n  - id: io")
    site = tmp_path / "site.yaml"
    site.write_text(text, encoding="utf-8")
    assert main(["check-config", str(site)]) == 1
    err = capsys.readouterr().err
    assert "devices[2].driver: unknown driver 'alfen_ng9000'" in err
    assert "devices[3].options.validity_s: must be a number in 1..3600" in err
