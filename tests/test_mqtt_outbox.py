"""The cloud link's outbox: order, survival of a killed process, and the bound policy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from drivers.mqtt.outbox import Outbox

TOPIC = "plaza/v1/s/main/sessions"


def _fill(box: Outbox, kind: str, n: int, start: int = 0, size: int = 10) -> None:
    for i in range(start, start + n):
        box.append(kind, TOPIC, b"x" * size, event_id=f"{kind}-{i}", created_ts=float(i))  # type: ignore[arg-type]


def test_rows_come_back_in_append_order_and_leave_on_delete(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    _fill(box, "session", 5)
    _fill(box, "ack", 3, start=5)
    rows = box.pending(limit=100)
    assert [r.event_id for r in rows] == [*(f"session-{i}" for i in range(5)), "ack-5", "ack-6", "ack-7"]
    assert [r.event_id for r in box.pending(rows[2].seq, limit=2)] == ["session-3", "session-4"]
    box.delete([rows[0].seq, rows[3].seq])
    assert [r.event_id for r in box.pending()] == ["session-1", "session-2", "session-4", "ack-5", "ack-6", "ack-7"]
    assert len(box) == 6


def test_an_event_id_is_stored_once(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    assert box.append("session", TOPIC, b"a", event_id="e1", created_ts=0.0) is not None
    assert box.append("session", TOPIC, b"b", event_id="e1", created_ts=1.0) is None
    assert len(box) == 1
    assert box.stats.duplicates == 1


def test_rows_survive_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    script = f"""
import os, signal
from drivers.mqtt.outbox import Outbox
box = Outbox({str(path)!r})
for i in range(50):
    box.append("session", "t", b"payload-%d" % i, event_id="e%d" % i, created_ts=float(i))
os.kill(os.getpid(), signal.SIGKILL)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent.parent, timeout=60)
    assert result.returncode == -9
    box = Outbox(path)
    assert [r.event_id for r in box.pending(limit=1000)] == [f"e{i}" for i in range(50)]
    assert box.pending(limit=1)[0].payload == b"payload-0"
    # Appending after the reopen continues the order.
    box.append("session", "t", b"late", event_id="late", created_ts=99.0)
    assert box.pending(limit=1000)[-1].event_id == "late"


def test_reopened_outbox_knows_its_size(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    _fill(box, "alarm", 7, size=100)
    box.close()
    again = Outbox(tmp_path / "o.sqlite")
    assert len(again) == 7
    assert again.size_bytes == 700


def test_full_outbox_thins_telemetry_oldest_first_and_keeps_everything_else(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_rows=100)
    _fill(box, "session", 20)
    _fill(box, "alarm", 5, start=20)
    _fill(box, "ack", 5, start=25)
    _fill(box, "telemetry", 71, start=30)  # one over the bound
    counts = box.counts()
    assert counts["session"] == 20
    assert counts["alarm"] == 5
    assert counts["ack"] == 5
    assert len(box) <= 90
    telemetry = [int(r.event_id.split("-")[1]) for r in box.pending(limit=1000) if r.kind == "telemetry"]
    # Every other one of the oldest went; the newest are all there.
    assert telemetry[:5] == [30, 32, 34, 36, 38]
    assert telemetry[-10:] == list(range(91, 101))
    assert box.stats.dropped == {"telemetry": 11}


def test_without_telemetry_the_oldest_acks_go_before_alarms_and_sessions(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_rows=100)
    _fill(box, "ack", 30)
    _fill(box, "alarm", 30, start=30)
    _fill(box, "session", 41, start=60)
    counts = box.counts()
    assert counts["session"] == 41
    assert counts["alarm"] == 30
    assert counts["ack"] == 19
    acks = [r.event_id for r in box.pending(limit=1000) if r.kind == "ack"]
    assert acks[0] == "ack-11"
    assert acks[-1] == "ack-29"


def test_byte_bound_holds(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_rows=10_000, max_bytes=100_000)
    _fill(box, "session", 10, size=1000)
    _fill(box, "telemetry", 200, start=10, size=1000)
    assert box.size_bytes <= 100_000
    assert box.counts()["session"] == 10
