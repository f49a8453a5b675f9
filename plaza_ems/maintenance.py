"""The maintenance interface of ``plaza-ems run``: the OPC UA server fed by the scan cycle.

``Maintenance`` owns the alarm book, the operator desk and the OPC UA server. The field link calls
``refresh`` before each cycle (operator commands into the image) and the publisher calls
``after_cycle`` after it: alarms are judged, the latch resets answered, and the objects whose values
changed go to the server in one batch. The time this publish step takes on the scan thread is kept
(``report``) and measured at scale by ``plaza-ems bench opcua``.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import time
from collections import deque
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from controller.alarms import AlarmBook, AlarmTransition
from controller.image import InputSnapshot, ProcessImage
from controller.program import CycleOutput
from controller.scan import CycleStats, percentile
from controller.site import Site
from drivers.ocpp201.csms import Csms
from drivers.opcua.config import OpcuaConfig
from drivers.opcua.server import OpcuaServer
from drivers.opcua.values import ControllerInfo, SiteLayout, SiteValues
from plaza_ems.operator import OperatorDesk

log = logging.getLogger("plaza_ems.maintenance")

STATS_EVERY_S = 2.0
"""The controller object's cycle figures are percentiles over 1000 cycles: worked out this often, not every cycle."""


def software_version() -> str:
    try:
        return version("plaza-ems")
    except PackageNotFoundError:
        return "unknown"


def config_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class Maintenance:
    def __init__(
        self, config: OpcuaConfig, site: Site, state_dir: Path, csms: Csms | None, info: ControllerInfo
    ) -> None:
        self.site = site
        self.info = info
        self.layout = SiteLayout(site)
        self.values = SiteValues(self.layout)
        self.alarms = AlarmBook(site)
        self.desk = OperatorDesk(site, state_dir, self.alarms, csms)
        self.server = OpcuaServer(
            config, site, self.layout, self.alarms.defs, self.desk.submit, state_dir, info.firmware_version
        )
        self._held: list[AlarmTransition] = []
        self._frozen = False
        self._stats: Mapping[str, float | int] = {}
        self._stats_due = 0.0
        self.publish_s: deque[float] = deque(maxlen=1000)

    def start(self) -> None:
        self.server.start(wait_s=None)

    def stop(self) -> None:
        self.server.stop()

    def refresh(self, snapshot: InputSnapshot, now: float) -> None:
        self.desk.refresh(snapshot, now)

    def after_cycle(
        self,
        image: ProcessImage,
        output: CycleOutput,
        stats: CycleStats,
        devices_online: Mapping[str, bool],
        info: ControllerInfo | None = None,
    ) -> None:
        started = time.perf_counter()
        self.desk.after_cycle(output)
        self._held.extend(self.alarms.evaluate(image, output, stats.overruns, devices_online))
        self._held.extend(self.desk.take_transitions())
        if not self.server.listening:
            if self.server.error is not None:
                self._held.clear()  # no server to tell: the log has the interlock events anyway
            return
        if not self._frozen:
            # The address space (tens of thousands of long-lived objects) was built after the scan loop
            # froze the heap (``CycleCollector``); left young, every full collection would walk it and
            # take hundreds of milliseconds of some cycle.
            gc.freeze()
            self._frozen = True
        now = time.monotonic()
        if now >= self._stats_due:
            self._stats = stats.summary()
            self._stats_due = now + STATS_EVERY_S
        updates = self.values.changes(image, output, self._stats, info or self.info, devices_online)
        held, self._held = self._held, []
        self.server.publish(updates, held)
        self.publish_s.append(time.perf_counter() - started)

    def report(self) -> dict[str, Any]:
        return {
            "url": self.server.url,
            "listening": self.server.listening,
            "publish_p50_ms": percentile(self.publish_s, 50) * 1000.0,
            "publish_p99_ms": percentile(self.publish_s, 99) * 1000.0,
            **self.server.stats,
        }
