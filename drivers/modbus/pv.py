"""SunSpec devices over Modbus TCP: model discovery, and the PV inverter with feed-in curtailment.

Discovery (``SunSpecDevice.connect``): a SunSpec device's register layout is only known after reading
it. On the first connect the driver looks for the "SunS" marker at PDU 40000, 0 and 50000, walks the
model chain (``[ID, L]`` headers up to the 0xFFFF end marker) with the same ``find_base``/``walk_models``
the map module defines, places the models it needs with ``absolute`` and re-plans its polling. The
layout is kept: a reconnect only checks the marker at the known base (one read, so reconnecting stays
inside the runtime's connect timeout) and walks again if it moved. A device without the marker, or
without a model the adapter needs, fails ``connect`` with a ``DeviceError`` that says what is missing.

PV inverter (``SunSpecPvDevice``): model 1 identity (slow), model 101/102/103 AC power and per-phase
currents with their scale factors. The process image has no PV reading of its own; when the device's
site entry names a ``meter`` (the PV's meter), the inverter's currents and power are published as that
meter's reading, power positive = generating.

Curtailment follows the cycle's DSO stage, not a PV-surplus rule of its own: in Germany the grid
operator's ripple-control receiver (EEG §9, relays K1-K4 = 100/60/30/0 %) limits the PV system's
feed-in, and the controller already turns those relays into ``CycleOutput.dso_pct``. Below 100 % the
driver writes WMaxLimPct = dso_pct with the revert timer WMaxLimPct_RvrtTms = ``revert_s`` and
WMaxLim_Ena = 1 (model 123; WMaxLimPctRvrtTms/WMaxLimPctEna in model 704 where that is what the
device has), and rewrites them every ``revert_s / 3``, so the limit never lapses while the controller
lives; at 100 % it writes the enable back to 0. If the controller dies the inverter drops the limit
on its own after ``revert_s``: a site that must hold a DSO stage without the EMS needs the receiver
wired to the inverter as well. WMaxLimPct is a percentage of the inverter's WMax, while the EEG stage
is a percentage of the PV rating; with WMax at or below the rating this curtails at least as much as
asked.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from pymodbus.exceptions import ModbusException

from controller.image import InputSnapshot, MeterReading
from controller.program import CycleOutput
from drivers.modbus.device import EXCEPTION_MEANINGS, Endpoint, ModbusDevice
from drivers.modbus.maps import sunspec
from drivers.modbus.registers import (
    Access,
    Behaviour,
    DataType,
    ReadError,
    Register,
    RegisterMap,
    Table,
    Value,
    decode,
)
from drivers.runtime import DeviceError

log = logging.getLogger(__name__)

DEFAULT_UNIT_ID = 1
"""SunSpec has no fixed unit id; 1 is the common default (set ``unit_id`` in the site file otherwise)."""

INVERTER_SPLIT_PHASE = replace(sunspec.INVERTER_1PH, id=102, name="inverter (split phase)")
"""Model 102 shares the point layout of 101 and 103."""
INVERTER_MODELS = (sunspec.INVERTER_3PH, INVERTER_SPLIT_PHASE, sunspec.INVERTER_1PH)
"""Integer inverter models, in order of preference when a device has more than one."""

INVERTER_FAST = ("current_l1_a", "current_l2_a", "current_l3_a", "current_sf", "power_w", "power_sf")
INVERTER_SLOW = (
    "voltage_l1_v",
    "voltage_l2_v",
    "voltage_l3_v",
    "voltage_sf",
    "frequency_hz",
    "frequency_sf",
    "energy_wh",
    "energy_sf",
    "operating_state",
)

ModelHeader = tuple[int, int, int]
"""(model id, PDU of its ID register, L) as ``walk_models`` returns it."""
Fetch = Callable[[int, int], Awaitable[list[int]]]


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a device keeps its SunSpec models."""

    base: int
    models: tuple[ModelHeader, ...]

    def find(self, *model_ids: int) -> ModelHeader | None:
        """The first model present among ``model_ids`` (in the order given), or None."""
        for model_id in model_ids:
            for header in self.models:
                if header[0] == model_id:
                    return header
        return None

    def describe(self) -> str:
        return f"SunSpec at {self.base}: models {', '.join(str(m[0]) for m in self.models) or 'none'}"


class _NotYetRead(Exception):  # noqa: N818 - control flow of the replay, never escapes ``discover``
    def __init__(self, address: int, count: int) -> None:
        super().__init__(f"{address}+{count}")
        self.key = (address, count)


async def discover(fetch: Fetch, unit: int) -> Layout:
    """Find the SunS marker and walk the model chain through the async ``fetch(address, count)``.

    ``find_base`` and ``walk_models`` read synchronously, the client is async: they are replayed over a
    cache of the answers so far, and each read they need that is not cached yet is fetched and the walk
    started again. A chain of N models at 40000 costs N + 2 requests (the replays only look up the cache).
    ``fetch`` raises ReadError for an exception response ("nothing there"), DeviceError for a
    connection failure (which aborts the discovery instead of truncating it).
    """
    answers: dict[tuple[int, int], list[int] | str] = {}

    def read(address: int, count: int) -> Sequence[int]:
        answer = answers.get((address, count))
        if answer is None:
            raise _NotYetRead(address, count)
        if isinstance(answer, str):
            raise ReadError(answer)
        return answer

    while True:
        try:
            base = sunspec.find_base(read)
            if base is None:
                tried = "; ".join(f"{b}: {_answer_text(answers.get((b, 2)))}" for b in sunspec.BASE_ADDRESSES)
                raise DeviceError(
                    f"no SunSpec device on unit {unit}: no 'SunS' marker at PDU 40000, 0 or 50000 ({tried})"
                )
            return Layout(base, tuple(sunspec.walk_models(read, base)))
        except _NotYetRead as missing:
            try:
                answers[missing.key] = await fetch(*missing.key)
            except ReadError as err:
                answers[missing.key] = str(err)
        except ValueError as err:  # a short answer to a model header
            raise DeviceError(f"SunSpec model chain on unit {unit}: {err}") from None


def _answer_text(answer: list[int] | str | None) -> str:
    if answer is None:
        return "not read"
    if isinstance(answer, str):
        return answer
    return " ".join(f"0x{word:04X}" for word in answer)


def place(
    model: sunspec.SunSpecModel,
    header: ModelHeader,
    unit: int,
    *,
    keep: Iterable[str],
    raw: Mapping[str, str] | None = None,
) -> RegisterMap:
    """The registers ``keep`` of ``model``, placed where the device has it.

    ``raw`` renames scaled registers the driver writes: ``ModbusDevice`` encodes writes without a scale
    factor, so such a register is mapped as its raw word and the adapter applies the SF it has read.
    """
    wanted = set(keep)
    renamed = raw or {}
    registers = []
    for register in model.registers:
        if register.name not in wanted:
            continue
        if register.name in renamed:
            register = replace(
                register,
                name=renamed[register.name],
                scale_factor=None,
                unit="",
                meaning=f"{register.meaning} (raw word; real = raw × 10^{register.scale_factor})",
            )
        registers.append(register)
    model_id, address, length = header
    try:
        return sunspec.absolute(replace(model, registers=tuple(registers)), address, length=length, unit_id=unit)
    except ValueError as err:
        raise DeviceError(f"SunSpec model {model_id} at {address}: {err}") from None


def to_raw(value: float, scale_factor: int) -> int:
    """The register word for ``value`` under SunSpec scale factor ``scale_factor`` (real = raw × 10^SF)."""
    # Integer powers of ten keep 60 % at SF -1 exactly 600 (60 / 0.1 is 599.999...).
    power: int = 10 ** abs(scale_factor)
    return round(value * power if scale_factor <= 0 else value / power)


def _marker_map(unit: int) -> RegisterMap:
    """What is known before discovery: where the SunS marker usually is."""
    marker = Register(
        name="suns_marker",
        pdu=sunspec.BASE_ADDRESSES[0],
        doc_address="40001 (SunS)",
        table=Table.HOLDING,
        type=DataType.U32,
        access=Access.R,
        meaning="0x53756E53 'SunS'; the real layout replaces this map on connect",
    )
    return RegisterMap(
        device="SunSpec (not discovered yet)",
        source=sunspec.SOURCE,
        registers=(marker,),
        behaviour=Behaviour(default_unit_id=unit),
    )


class SunSpecDevice(ModbusDevice):
    """A ``ModbusDevice`` whose register maps come from SunSpec discovery on connect.

    Subclasses implement ``install(layout)``: the maps and fast register names for the discovered
    models, raising DeviceError when a model they need is missing.
    """

    def __init__(self, name: str, endpoint: Endpoint) -> None:
        self.unit = endpoint.unit_id if endpoint.unit_id is not None else DEFAULT_UNIT_ID
        super().__init__(name, endpoint, [_marker_map(self.unit)], fast=())
        self.layout: Layout | None = None

    def install(self, layout: Layout) -> tuple[list[RegisterMap], list[str]]:
        raise NotImplementedError

    async def connect(self) -> None:
        await super().connect()
        try:
            await self._ensure_layout()
        except BaseException:
            await self.close()
            raise

    async def _ensure_layout(self) -> None:
        if self.layout is not None:
            try:
                marker = await self._fetch(self.layout.base, 2)
            except ReadError:
                marker = []
            if tuple(marker) == sunspec.SUNS:
                return  # same device as before: keep the maps, and the scale factors already read
            log.warning("%s: SunS marker no longer at %d, discovering again", self.name, self.layout.base)
            self.layout = None
        layout = await discover(self._fetch, self.unit)
        maps, fast = self.install(layout)
        self.use_maps(maps, fast)
        await self._read_scale_factors()
        self.layout = layout
        log.info("%s: %s", self.name, layout.describe())

    async def _read_scale_factors(self) -> None:
        """Read every scale factor once before the first poll.

        ``ModbusDevice.read`` decodes a block in address order, and SunSpec puts a model's scale factors
        after its values (W at +14, W_SF at +15; ChaState at +8, ChaState_SF at +22): without a known SF
        the first poll would fail. Later polls read the SFs again with their values.
        """
        for register_map in self.maps:
            for register in register_map.registers:
                # Every SunSpec SF is named *_sf, also those of registers the adapter writes raw.
                if not register.name.endswith("_sf"):
                    continue
                try:
                    words = await self._fetch(register.pdu, register.count)
                except ReadError as err:
                    raise DeviceError(f"scale factor {register.name} ({register.doc_address}): {err}") from None
                value = decode(register, words)
                if value is not None and not (isinstance(value, int) and -10 <= value <= 10):
                    raise DeviceError(f"scale factor {register.name} ({register.doc_address}) is {value}, not -10..10")
                self.values[register.name] = value

    async def _fetch(self, address: int, count: int) -> list[int]:
        """FC03 on the device's unit: ReadError for an exception response, DeviceError for a broken link."""
        client = self._client_or_fail()
        try:
            response = await client.read_holding_registers(address, count=count, device_id=self.unit)
        except ModbusException as err:
            raise DeviceError(f"SunSpec discovery read at {address}: {err}") from None
        if response.isError():
            code = getattr(response, "exception_code", 0)
            raise ReadError(f"exception {code} ({EXCEPTION_MEANINGS.get(code, 'unknown')})")
        if len(response.registers) != count:
            raise DeviceError(f"SunSpec read at {address}: answered {len(response.registers)} registers, asked {count}")
        return list(response.registers)

    def scale_factor(self, name: str) -> int | None:
        """A scale factor as read; 0 where the device marks it not implemented; None before it is read."""
        if name not in self.values:
            return None
        value = self.values[name]
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    def inverter_maps(self, layout: Layout) -> tuple[list[RegisterMap], list[str], int | None]:
        """Model 1 (identity, slow) and the first of 103/102/101 with its fast points, and that model's id."""
        maps: list[RegisterMap] = []
        common = layout.find(sunspec.COMMON.id)
        if common is not None:
            maps.append(place(sunspec.COMMON, common, self.unit, keep=("manufacturer", "model", "serial_number")))
        header = layout.find(*(m.id for m in INVERTER_MODELS))
        if header is None:
            return maps, [], None
        model = next(m for m in INVERTER_MODELS if m.id == header[0])
        maps.append(place(model, header, self.unit, keep=INVERTER_FAST + INVERTER_SLOW))
        return maps, list(INVERTER_FAST), header[0]

    def inverter_currents_a(self, model_id: int | None) -> tuple[float, float, float]:
        n = self.number
        if model_id == sunspec.INVERTER_1PH.id:
            # A single-phase inverter leaves phases B and C "not implemented"; it feeds one phase only.
            return n("current_l1_a"), 0.0, 0.0
        return n("current_l1_a"), n("current_l2_a"), n("current_l3_a")


@dataclass(frozen=True, slots=True)
class _Curtailment:
    """Register names of one controls model: limit (raw word), its SF, revert timer, enable."""

    model: sunspec.SunSpecModel
    limit_raw: str = "power_limit_raw"
    limit_sf: str = "power_limit_sf"
    revert_s: str = "power_limit_revert_s"
    enable: str = "power_limit_enable"


class SunSpecPvDevice(SunSpecDevice):
    """A SunSpec PV inverter: its power as the PV meter's reading, its output curtailed to the DSO stage."""

    slow_every_s = 10.0

    def __init__(
        self,
        name: str,
        endpoint: Endpoint,
        *,
        pv_id: str,
        meter_id: str | None,
        revert_s: float,
        curtail: bool = True,
    ) -> None:
        super().__init__(name, endpoint)
        self.pv_id = pv_id
        self.meter_id = meter_id
        self.revert_s = revert_s
        self.curtail = curtail
        self.inverter_model: int | None = None
        self.controls: _Curtailment | None = None
        self.curtailing = False
        """The last output asked for a limit (below 100 %)."""

    def install(self, layout: Layout) -> tuple[list[RegisterMap], list[str]]:
        maps, fast, self.inverter_model = self.inverter_maps(layout)
        if self.inverter_model is None:
            raise DeviceError(
                f"{layout.describe()}: no inverter model 101, 102 or 103 (AC power and currents) for pv "
                f"'{self.pv_id}'; float models 111-113 are not supported"
            )
        self.controls = None
        if self.curtail:
            header = layout.find(sunspec.CONTROLS.id, sunspec.DER_CONTROLS.id)
            if header is None:
                raise DeviceError(
                    f"{layout.describe()}: no model 123 (immediate controls) or 704 (DER controls) to curtail "
                    f"pv '{self.pv_id}' (set options.curtail: false to only read it)"
                )
            model = sunspec.CONTROLS if header[0] == sunspec.CONTROLS.id else sunspec.DER_CONTROLS
            self.controls = _Curtailment(model)
            keep = ("power_limit_pct", "power_limit_sf", "power_limit_revert_s", "power_limit_enable")
            maps.append(place(model, header, self.unit, keep=keep, raw={"power_limit_pct": "power_limit_raw"}))
        return maps, fast

    def publish(self, snapshot: InputSnapshot, now: float) -> None:
        if self.meter_id is None:
            return
        current_a = self.inverter_currents_a(self.inverter_model)
        snapshot.meters[self.meter_id] = MeterReading(current_a, self.number("power_w"), now)

    def unpublish(self, snapshot: InputSnapshot) -> None:
        if self.meter_id is not None:
            snapshot.meters.pop(self.meter_id, None)

    def limit_pct(self) -> float:
        """The WMaxLimPct the inverter holds (NaN before it is read), whether or not it is enabled."""
        controls = self.controls
        sf = self.scale_factor(controls.limit_sf) if controls is not None else None
        raw = self.number(controls.limit_raw) if controls is not None else math.nan
        return raw * 10.0**sf if sf is not None else math.nan

    def commands(self, output: CycleOutput) -> Mapping[str, Value]:
        controls = self.controls
        if controls is None:
            return {}
        self.curtailing = output.dso_pct < 100.0
        if not self.curtailing:
            return {controls.enable: 0}
        sf = self.scale_factor(controls.limit_sf)
        if sf is None:
            return {}  # the scale factor is read on connect; without it the limit cannot be encoded
        pct = min(100.0, max(0.0, output.dso_pct))
        return {
            controls.limit_raw: to_raw(pct, sf),
            controls.revert_s: round(self.revert_s),
            controls.enable: 1,
        }

    def refresh_s(self, name: str) -> float | None:
        # While limiting, the limit, its timer and the enable are rewritten before the timer runs out;
        # at 100 % the enable 0 goes out on change (and after a reconnect) only, as nothing can revert it.
        return self.revert_s / 3.0 if self.curtailing else None
