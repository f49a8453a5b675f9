"""``plaza-ems bench ocpp`` in small: a handful of simulated stations against the controller as a process."""

from __future__ import annotations

from pathlib import Path

from controller.config import load_config
from drivers.ocpp201.stations import compile_stations
from plaza_ems.bench_ocpp import bench_ocpp, bench_site, write_bench_files

PORT = 19940


def test_generated_site_is_valid_and_binds_at_every_level(tmp_path: Path) -> None:
    site_path, scenario_path = write_bench_files(tmp_path, 200, 120.0, PORT)
    loaded = load_config(site_path)
    stations, issues = compile_stations(loaded.config)
    assert not issues
    assert len(stations) == 200
    assert loaded.config.scan.period_ms == 1000
    assert loaded.config.ocpp is not None
    assert loaded.config.ocpp.tx_updated_interval_s == 10
    tree = bench_site(200, PORT)["tree"]
    assert tree["limit_a"] == round(200 * 32 * 0.6)
    assert scenario_path.exists()


def test_bench_with_five_stations(tmp_path: Path) -> None:
    result = bench_ocpp(stations=5, duration_s=7.0, port=PORT, workdir=tmp_path)
    assert result["stations"] == 5
    assert result["connected_max"] == 5
    assert result["booted"] == 5
    assert isinstance(result["overruns"], int)
    assert result["cycles"] >= 6
    assert result["transaction_events"] > 0
    assert result["te_response_p99_ms"] > 0
    assert result["te_roundtrip_p99_ms"] > 0
    assert result["csms_timeouts"] == 0
    assert result["controller_exit"] == 0
    assert result["controller_rss_mb"] is None or result["controller_rss_mb"] > 10
    assert (tmp_path / "stats.json").exists()
