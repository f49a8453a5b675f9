"""``plaza-ems hil``: the simulated plaza in real time, every device answering over Modbus TCP.

The plant model of ``plaza-ems sim`` (EVs, chargers, battery, PV, building load, contacts, DSO stage)
advances with the wall clock from the scenario's start; each device of the site file's ``devices``
section is served on its host:port by the simulator for its driver, from the same register maps the
drivers read. Scenario faults act on the wire: ``meter_silent``/``io_silent``/``charger_silent`` make
the serving device silent, ``meter_nan`` makes it answer garbage, ``device_fault`` injects silence,
exception responses, slow answers, garbage or dropped connections into one device.

Devices with ``driver: ocpp201`` are simulated OCPP 2.0.1 stations (``hil/ocpp201``) that connect to
the controller's CSMS as clients; ``ocpp_fault`` events act on them, and a silent charger of such a
station is the station going offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from hil.modbus.context import SimContext
from hil.modbus.devices import SIM_DEVICES
from hil.modbus.server import EndpointServer, Fault, FaultKind, SimulatedDevice
from hil.ocpp201.station import SimStation
from hil.scenario import ChargerSilent, DeviceFault, IoSilent, MeterFault, OcppFault, Scenario
from plaza_ems.simulate import Simulation

log = logging.getLogger("plaza_ems.hil")

TICK_S = 0.1


class HilSimulation(Simulation):
    """The scenario's plant and timeline, with faults routed to the simulated devices."""

    def __init__(self, scenario: Scenario, now: Callable[[], float]) -> None:
        super().__init__(scenario)
        self.now = now
        self.devices: dict[str, SimulatedDevice] = {}
        self.stations: dict[str, SimStation] = {}

    def _apply_event(self, event: Any, t_rel: float, t: float) -> None:
        super()._apply_event(event, t_rel, t)
        until = t + getattr(event, "duration_s", 0.0)
        site = self.scenario.site
        if isinstance(event, DeviceFault):
            fault = Fault(event.fault, until, event.exception_code, event.delay_ms / 1000.0)
            self._fault([event.device], fault)
        elif isinstance(event, MeterFault):
            kind: FaultKind = "silent" if event.type == "meter_silent" else "garbage"
            self._fault([d.id for d in site.devices if d.meter == event.meter], Fault(kind, until))
        elif isinstance(event, IoSilent):
            self._fault([d.id for d in site.devices if event.contact in d.contacts], Fault("silent", until))
        elif isinstance(event, ChargerSilent):
            self._fault([d.id for d in site.devices if event.connector in d.connectors], Fault("silent", until))
        elif isinstance(event, OcppFault):
            self.stations[event.station].inject(event.fault, event.duration_s)

    def _fault(self, device_ids: list[str], fault: Fault) -> None:
        for device_id in device_ids:
            station = self.stations.get(device_id)
            if station is not None:
                # A silent OCPP station is one that has lost its connection.
                station.inject("offline", fault.until_s - self.now())
            device = self.devices.get(device_id)
            if device is not None:
                device.fault = fault
                log.warning("fault injected: %s %s for %.0f s", device_id, fault.kind, fault.until_s - self.now())


class HilPlaza:
    """The plant, its timeline and one Modbus TCP server per endpoint of the site file."""

    def __init__(self, scenario: Scenario, clock: Callable[[], float] | None = None) -> None:
        self.scenario = scenario
        offset = scenario.start_s - time.time()
        self.clock = clock or (lambda: time.time() + offset)
        self.simulation = HilSimulation(scenario, self.clock)
        site = scenario.site
        endpoints: dict[tuple[str, int], dict[int, SimulatedDevice]] = defaultdict(dict)
        for device_config in site.devices:
            if device_config.driver == "ocpp201":
                self.simulation.stations[device_config.id] = SimStation(site, device_config, self.simulation.plant)
                continue
            factory = SIM_DEVICES.get(device_config.driver)
            if factory is None:
                raise ValueError(f"devices: no simulator for driver '{device_config.driver}' ({device_config.id})")
            ctx = SimContext(site, device_config, self.simulation.plant, self.simulation, self.clock)
            device = factory(ctx)
            self.simulation.devices[device_config.id] = device
            for unit in device.image.unit_ids:
                endpoint = endpoints[(device_config.host, device_config.port)]
                if unit in endpoint:
                    raise ValueError(
                        f"devices: {device_config.id} and {endpoint[unit].name} both answer unit {unit} "
                        f"on {device_config.host}:{device_config.port}"
                    )
                endpoint[unit] = device
        self.servers = [EndpointServer(host, port, units) for (host, port), units in endpoints.items()]
        self._last_t: float | None = None
        self._stop = asyncio.Event()
        self._station_tasks: list[asyncio.Task[None]] = []

    @property
    def devices(self) -> dict[str, SimulatedDevice]:
        return self.simulation.devices

    @property
    def stations(self) -> dict[str, SimStation]:
        """The simulated OCPP stations, clients of the controller's CSMS."""
        return self.simulation.stations

    def tick(self) -> None:
        """Advance the plant to now, play the timeline and refresh every register image."""
        sim = self.simulation
        t = self.clock()
        if self._last_t is not None and t > self._last_t:
            sim.plant.step(self._last_t, t - self._last_t)
        self._last_t = t
        sim.inputs(t - self.scenario.start_s, t)
        for device in self.devices.values():
            device.update(t)
        for station in self.stations.values():
            station.update(t)
        for server in self.servers:
            if any(
                d.active_fault() is not None and d.fault is not None and d.fault.kind == "drop"
                for d in server.units.values()
            ):
                server.drop_connections()

    async def start(self) -> None:
        self.tick()
        for server in self.servers:
            await server.start()
        self._stop.clear()
        self._station_tasks = [
            asyncio.create_task(station.run(self._stop), name=f"sim-{station.id}") for station in self.stations.values()
        ]
        log.info(
            "HIL plaza '%s': %d Modbus devices on %s, %d OCPP stations",
            self.scenario.name,
            len(self.devices),
            ", ".join(f"{s.host}:{s.port}" for s in self.servers) or "-",
            len(self.stations),
        )

    async def run(self, stop: asyncio.Event, duration_s: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + duration_s if duration_s is not None else None
        next_tick = loop.time()
        while not stop.is_set() and (end is None or loop.time() < end):
            self.tick()
            next_tick += TICK_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_tick - loop.time()))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._station_tasks, return_exceptions=True)
        self._station_tasks = []
        for server in self.servers:
            await server.stop()
