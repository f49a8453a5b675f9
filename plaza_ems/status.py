"""What a running controller tells its operator: interlock events, mode changes, a status line, statistics.

``CyclePublisher`` is the scan loop's publisher for ``plaza-ems run``: interlock events and site-mode
changes are logged at once, a status line every ``every_s`` (its content depends on what the controller
drives), and the statistics go to ``--stats-json`` every 10 s and at exit, written atomically.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from controller.interlocks import SiteMode
from controller.program import CycleOutput
from controller.scan import CycleStats

log = logging.getLogger("plaza_ems.run")

STATS_EVERY_S = 10.0


class CyclePublisher:
    def __init__(self, every_s: float, stats_json: Path | None) -> None:
        self.every_s = every_s
        self.stats_json = stats_json
        self._next_status = 0.0
        self._next_stats = 0.0
        self._mode = ""

    def publish(self, output: CycleOutput, stats: CycleStats) -> None:
        for event in output.events:
            level = logging.WARNING if event.kind in ("tripped", "overdraw") else logging.INFO
            # Connector events ('overdraw', 'overdraw_ended') name the connector where others name a latch.
            what = "connector" if event.kind.startswith("overdraw") else "interlock"
            log.log(level, "%s %s %s: %s", what, event.latch, event.kind, event.detail)
        if output.mode.value != self._mode:
            level = logging.INFO if output.mode is SiteMode.NORMAL else logging.WARNING
            log.log(level, "site mode is now %s", output.mode.value)
            self._mode = output.mode.value
        now = time.monotonic()
        if now >= self._next_status:
            self._next_status = now + self.every_s
            self.log_status(output, stats)
        if self.stats_json is not None and now >= self._next_stats:
            self._next_stats = now + STATS_EVERY_S
            self.write_stats(stats)

    def log_status(self, output: CycleOutput, stats: CycleStats) -> None:
        """One status line, saying what this kind of run can see."""
        raise NotImplementedError

    def report(self, stats: CycleStats) -> dict[str, Any]:
        return dict(stats.summary())

    def write_stats(self, stats: CycleStats) -> None:
        if self.stats_json is None:
            return
        self.stats_json.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.stats_json.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.report(stats)) + "\n", encoding="utf-8")
        tmp.replace(self.stats_json)
