"""``plaza-ems optimizer``: the cloud optimiser service — site snapshots in over MQTT v5, plans out.

Every process subscribes ``$share/{group}/plaza/v1/+/+/snapshot`` at QoS 1, so the broker hands each
snapshot to one member of the group and several processes split the sites between them; a process that
dies leaves the group at once (clean session), and the others get every site's next snapshot. Each also
subscribes, not shared, to ``plaza/v1/+/+/plan``, to learn which snapshot every published plan answers
(``snapshot_id``): together with the ids it has taken itself (``SnapshotQueue``, bounded) that is how no
snapshot is solved twice, even one the broker redelivers after another process already answered it.

A snapshot waits in the queue (one per site controller: a newer one supersedes the one waiting; one
older than ``max_snapshot_age_s`` is dropped) for the single solver thread, so the MQTT loop keeps its
keepalive while OSQP works. One ``ChargePlanProblem`` per ``structure_hash`` is kept (LRU bounded) and
warm-started across that site's snapshots. The plan goes to ``plan`` (QoS 1) and the answer to
``snapshot/ack``: accepted with the plan id and solve time, or refused with the reason — a snapshot
that is malformed, schema-invalid, nonsense or that OSQP cannot solve is PUBACKed all the same (the
broker would redeliver it forever otherwise), logged and refused, and the service goes on. The link is
retried with back-off and jitter like the controller's; SIGTERM stops it cleanly. Reference:
``docs/optimizer.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import logging
import os
import random
import signal
import socket
import ssl
import statistics
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import gmqtt
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.config import Id
from drivers.mqtt.config import BrokerLogin, PositiveS
from drivers.mqtt.link import NoReconnectClient, failure_reason
from drivers.mqtt.messages import PREFIX, encode, iso, loads_strict
from mpc.forecast import SeriesLike
from mpc.model import MpcError
from mpc.problem import ChargePlanProblem
from mpc.snapshot import (
    PlanSettings,
    Refused,
    Snapshot,
    parse_snapshot,
    plan_inputs,
    plan_message,
    planning_site,
)

log = logging.getLogger("mpc.service")

SNAPSHOT_FILTER = f"{PREFIX}/+/+/snapshot"
PLAN_FILTER = f"{PREFIX}/+/+/plan"


# -- configuration -----------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerConfig(BrokerLogin):
    client_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    """Default ``plaza-optimizer-{host}-{pid}``: unique per process, as a shared subscription needs."""
    backoff_cap_s: PositiveS = 60.0

    @model_validator(mode="after")
    def _password_file_exists(self) -> Self:
        if self.password_file is not None and not Path(self.password_file).is_file():
            raise ValueError(f"password_file {self.password_file!r} does not exist")
        return self


class OptimizerConfig(_Model):
    broker: BrokerConfig
    share_group: Id = "optimizers"
    """The shared subscription's group: every process of one group splits the snapshots."""
    horizon_h: Annotated[float, Field(gt=0, le=168)] = 24.0
    step_min: Annotated[int, Field(ge=1, le=60)] = 15
    price_csv: str | None = None
    """Day-ahead prices (``utc_start``, ``price_eur_per_mwh``); default the committed NL 2023 excerpt.
    Outside its dates the same time of year in its first year is used."""
    use_snapshot_prices: bool = True
    """Prices a snapshot carries (the site's last ``cmd/prices``) take precedence over the CSV."""
    import_adder_eur_kwh: Annotated[float, Field(ge=0, le=10)] = 0.03
    export_deduction_eur_kwh: Annotated[float, Field(ge=0, le=10)] = 0.01
    peak_tariff_eur_kw: Annotated[float, Field(ge=0, le=1000)] = 0.0
    peak_reserve_share: Annotated[float, Field(ge=0, le=0.9)] = 0.2
    """The top this share of the month's peak import is held back for EVs yet to arrive."""
    peak_reserve_eur_kw: Annotated[float, Field(ge=0, le=1000)] | None = None
    """Price of using that reserve, EUR/kW (at most the tariff); default: the tariff."""
    default_energy_wh: Annotated[float, Field(ge=0, le=1e6)] = 20_000.0
    default_dwell_h: Annotated[float, Field(gt=0, le=168)] = 4.0
    max_snapshot_age_s: PositiveS = 600.0
    max_payload_bytes: Annotated[int, Field(ge=1024, le=64 * 2**20)] = 4 * 2**20
    problem_cache: Annotated[int, Field(ge=1, le=10_000)] = 64
    """Problems kept (one per site structure), least recently used dropped first."""
    seen_ids: Annotated[int, Field(ge=100, le=10_000_000)] = 100_000
    """Snapshot ids remembered (taken here or answered by any plan), oldest forgotten first."""
    stats_interval_s: PositiveS = 60.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _grid(self) -> Self:
        steps = self.horizon_h * 60.0 / self.step_min
        if abs(steps - round(steps)) > 1e-9:
            raise ValueError(f"horizon_h {self.horizon_h} is not a whole number of {self.step_min} min steps")
        if self.price_csv is not None and not Path(self.price_csv).is_file():
            raise ValueError(f"price_csv {self.price_csv!r} does not exist")
        return self

    def plan_settings(self) -> PlanSettings:
        return PlanSettings(
            horizon_h=self.horizon_h,
            step_min=self.step_min,
            peak_tariff_eur_kw=self.peak_tariff_eur_kw,
            peak_reserve_share=self.peak_reserve_share,
            peak_reserve_eur_kw=self.peak_reserve_eur_kw,
            import_adder_eur_kwh=self.import_adder_eur_kwh,
            export_deduction_eur_kwh=self.export_deduction_eur_kwh,
            default_energy_wh=self.default_energy_wh,
            default_dwell_h=self.default_dwell_h,
            use_snapshot_prices=self.use_snapshot_prices,
        )


class OptimizerConfigError(Exception):
    """An optimizer file that cannot be used; the message names every bad field by its path."""

    def __init__(self, issues: list[str], source: str) -> None:
        self.issues = issues
        lines = "\n".join(f"  {issue}" for issue in issues)
        super().__init__(f"{source}: invalid optimizer configuration ({len(issues)} problem(s)):\n{lines}")


def load_optimizer_config(path: str) -> OptimizerConfig:
    """The optimiser's YAML file; OptimizerConfigError naming every problem by its path."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise OptimizerConfigError([f"cannot read file: {err}"], path) from None
    try:
        return OptimizerConfig.model_validate(raw)
    except ValidationError as err:
        issues = [
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors()
        ]
        raise OptimizerConfigError(issues, path) from None


# -- the queue: dedupe, superseded, too old (no I/O) ---------------------------------------------------

DropReason = Literal["duplicate", "superseded", "too_old"]


@dataclass(slots=True)
class QueueStats:
    queued: int = 0
    duplicates: int = 0
    superseded: int = 0
    too_old: int = 0


class SnapshotQueue:
    """Snapshots waiting for the solver: at most one per site controller, none seen before, none too old.

    ``offer`` a parsed snapshot, ``answered`` the ``snapshot_id`` of every plan seen on the broker,
    ``take`` the next one to solve (marking it seen). Each drop is counted by reason and returned, so the
    caller can answer it. Memory is bounded: ``memory`` ids, and one waiting snapshot per controller.
    """

    def __init__(self, *, max_age_s: float, memory: int) -> None:
        self.max_age_s = max_age_s
        self.memory = memory
        self.stats = QueueStats()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._pending: OrderedDict[tuple[str, str], Snapshot] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def seen(self, snapshot_id: str) -> bool:
        return snapshot_id in self._seen

    def _remember(self, snapshot_id: str) -> None:
        self._seen[snapshot_id] = None
        self._seen.move_to_end(snapshot_id)
        while len(self._seen) > self.memory:
            self._seen.popitem(last=False)

    def offer(self, snapshot: Snapshot, now_ts: float) -> list[tuple[Snapshot, DropReason]]:
        """Queue ``snapshot`` unless it is a duplicate or too old; what was dropped, with why."""
        if snapshot.id in self._seen:
            self.stats.duplicates += 1
            return [(snapshot, "duplicate")]
        if now_ts - snapshot.created_ts > self.max_age_s:
            self.stats.too_old += 1
            return [(snapshot, "too_old")]
        waiting = self._pending.get(snapshot.key)
        if waiting is not None:
            if waiting.id == snapshot.id:
                self.stats.duplicates += 1
                return [(snapshot, "duplicate")]
            self.stats.superseded += 1
            if waiting.created_ts > snapshot.created_ts:
                return [(snapshot, "superseded")]
            # Keeps the controller's place in the queue: the site that waited longest goes first.
            self._pending[snapshot.key] = snapshot
            self.stats.queued += 1
            return [(waiting, "superseded")]
        self._pending[snapshot.key] = snapshot
        self.stats.queued += 1
        return []

    def answered(self, snapshot_id: str) -> Snapshot | None:
        """A plan for ``snapshot_id`` is on the broker: never solve it; the waiting one it was, if any."""
        self._remember(snapshot_id)
        for key, waiting in self._pending.items():
            if waiting.id == snapshot_id:
                del self._pending[key]
                self.stats.duplicates += 1
                return waiting
        return None

    def take(self, now_ts: float) -> tuple[Snapshot | None, list[tuple[Snapshot, DropReason]]]:
        """The next snapshot to solve (now seen), and those that grew too old while waiting."""
        dropped: list[tuple[Snapshot, DropReason]] = []
        while self._pending:
            _, snapshot = self._pending.popitem(last=False)
            if now_ts - snapshot.created_ts > self.max_age_s:
                self.stats.too_old += 1
                dropped.append((snapshot, "too_old"))
                continue
            self._remember(snapshot.id)
            return snapshot, dropped
        return None, dropped


class ProblemCache:
    """One ``ChargePlanProblem`` per structure hash, least recently used dropped beyond ``size``."""

    def __init__(self, size: int, build: Callable[[Any], ChargePlanProblem]) -> None:
        self.size = size
        self._build = build
        self._problems: OrderedDict[str, ChargePlanProblem] = OrderedDict()
        self.built = 0

    def get(self, key: str, site: Any) -> ChargePlanProblem:
        problem = self._problems.get(key)
        if problem is None or problem.site != site:
            problem = self._build(site)
            self.built += 1
            self._problems[key] = problem
        self._problems.move_to_end(key)
        while len(self._problems) > self.size:
            self._problems.popitem(last=False)
        return problem


# -- the service -------------------------------------------------------------------------------------


@dataclass(slots=True)
class ServiceStats:
    connected: bool = False
    connects: int = 0
    connect_failures: int = 0
    last_error: str = ""
    received: int = 0
    solved: int = 0
    rejected: int = 0
    """Refused: malformed, schema-invalid, nonsense, or the solver failed."""
    solver_failures: int = 0
    plans_seen: int = 0
    solve_s: deque[float] = field(default_factory=lambda: deque(maxlen=1000))

    def solve_p50_s(self) -> float | None:
        return statistics.median(self.solve_s) if self.solve_s else None


class _LostError(Exception):
    """The connection went away (its reason is in the message)."""


class OptimizerService:
    """One optimiser process: ``run`` it until ``stop``."""

    def __init__(
        self,
        config: OptimizerConfig,
        *,
        prices: SeriesLike | None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.settings = config.plan_settings()
        self.prices = prices
        self.clock = clock
        self.rng = rng or random.Random()
        self.client_id = config.broker.client_id or f"plaza-optimizer-{socket.gethostname()}-{os.getpid()}"
        self.queue = SnapshotQueue(max_age_s=config.max_snapshot_age_s, memory=config.seen_ids)
        self.problems = ProblemCache(
            config.problem_cache,
            lambda site: ChargePlanProblem(site, horizon_h=config.horizon_h, step_min=config.step_min),
        )
        self.stats = ServiceStats()
        # One solver thread: problems are not thread-safe, and one solve at a time per process is the
        # unit the fleet scales by (more processes in the share group).
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="solver")
        self._client: NoReconnectClient | None = None
        self._work = asyncio.Event()
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._logged_error = ""

    # -- connection --------------------------------------------------------------------------------

    def backoff_s(self, failures: int) -> float:
        return self.config.broker.backoff_s(failures, self.rng)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop``; never raises (cancellation aside)."""
        worker = asyncio.create_task(self._worker(stop), name="solver")
        reporter = asyncio.create_task(self._report_every(stop), name="stats")
        failures = 0
        try:
            while not stop.is_set():
                try:
                    await self._session(stop)
                    failures = 0
                except _LostError:
                    failures = 1
                except Exception as err:  # every failure is retried
                    failures += 1
                    self.stats.connect_failures += 1
                    self._failed(failure_reason(err))
                if stop.is_set():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.backoff_s(max(1, failures)))
        finally:
            stop.set()
            self._work.set()
            for task in (worker, reporter):
                task.cancel()
            await asyncio.gather(worker, reporter, return_exceptions=True)
            self._executor.shutdown(wait=False, cancel_futures=True)
            self.log_stats("stopped")

    def _failed(self, reason: str) -> None:
        self.stats.last_error = reason
        broker = self.config.broker
        if reason != self._logged_error:
            log.warning("broker %s:%d: %s (retrying with back-off)", broker.host, broker.port, reason)
            self._logged_error = reason

    async def _session(self, stop: asyncio.Event) -> None:
        broker = self.config.broker
        # Clean session: a process that dies leaves the share group at once instead of having the
        # broker queue half the snapshots for it.
        client = NoReconnectClient(
            self.client_id,
            clean_session=True,
            optimistic_acknowledgement=False,
            logger=logging.getLogger("mpc.gmqtt"),
        )
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        if broker.username is not None:
            client.set_auth_credentials(broker.username, broker.password_value())
        self._lost.clear()
        tls: ssl.SSLContext | bool = broker.tls.context() if broker.tls is not None else False
        try:
            async with asyncio.timeout(broker.connect_timeout_s):
                await client.connect(broker.host, broker.port, ssl=tls, keepalive=broker.keepalive_s)
            self._client = client
            client.subscribe(
                [
                    gmqtt.Subscription(f"$share/{self.config.share_group}/{SNAPSHOT_FILTER}", qos=1),
                    gmqtt.Subscription(PLAN_FILTER, qos=1),
                ]
            )
            self.stats.connected = True
            self.stats.connects += 1
            self.stats.last_error = ""
            self._logged_error = ""
            log.info(
                "optimizer %s connected to %s:%d, share group %r",
                self.client_id,
                broker.host,
                broker.port,
                self.config.share_group,
            )
            while not stop.is_set():
                if self._lost.is_set() or not client.is_connected:
                    raise _LostError(self._lost_reason or "connection closed")
                waiters = {asyncio.ensure_future(w.wait()) for w in (stop, self._lost)}
                try:
                    await asyncio.wait(waiters, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
        finally:
            self._client = None
            if self.stats.connected:
                self.stats.connected = False
                log.warning("broker connection lost: %s", self._lost_reason or "stopped")
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await client.disconnect()

    def _on_disconnect(self, client: NoReconnectClient, packet: object, exc: BaseException | None = None) -> None:
        self._lost_reason = failure_reason(exc) if exc is not None else "broker closed the connection"
        self._lost.set()

    # -- inbound -----------------------------------------------------------------------------------

    async def _on_message(
        self, client: NoReconnectClient, topic: str, payload: bytes, qos: int, properties: object
    ) -> int:
        """Every inbound PUBLISH; returns the PUBACK reason code, 0 (success) whatever the snapshot was.

        A coroutine: gmqtt sends the PUBACK (without optimistic acknowledgement) only when one ends.
        """
        if topic.endswith("/plan"):
            self._plan_seen(payload)
            return 0
        self.stats.received += 1
        result = parse_snapshot(topic, payload, max_payload_bytes=self.config.max_payload_bytes)
        if result is None:
            log.warning("message on %s ignored: not a snapshot topic", topic)
        elif isinstance(result, Refused):
            self._refuse(result.site, result.controller, result.id, result.reason)
        else:
            for snapshot, why in self.queue.offer(result, self.clock()):
                self._dropped(snapshot, why)
            self._work.set()
        return 0

    def _plan_seen(self, payload: bytes) -> None:
        try:
            data = loads_strict(payload)
        except (UnicodeDecodeError, ValueError, RecursionError):
            return  # not ours to judge: the controller refuses it
        snapshot_id = data.get("snapshot_id") if isinstance(data, dict) else None
        if isinstance(snapshot_id, str):
            self.stats.plans_seen += 1
            waiting = self.queue.answered(snapshot_id)
            if waiting is not None:
                self._dropped(waiting, "duplicate")

    def _dropped(self, snapshot: Snapshot, why: str) -> None:
        if why == "duplicate":
            log.debug("snapshot %s of %s/%s already answered: not solved again", snapshot.id, *snapshot.key)
            return
        reason = (
            "superseded by a newer snapshot of this controller"
            if why == "superseded"
            else f"too old: created {self.clock() - snapshot.created_ts:.0f} s ago, "
            f"max_snapshot_age_s is {self.config.max_snapshot_age_s:g}"
        )
        log.info("snapshot %s of %s/%s not solved: %s", snapshot.id, *snapshot.key, reason)
        self._ack(snapshot.site, snapshot.controller, snapshot.id, accepted=False, reason=reason)

    def _refuse(self, site: str, controller: str, snapshot_id: str | None, reason: str) -> None:
        self.stats.rejected += 1
        log.warning("snapshot %s of %s/%s refused: %s", snapshot_id, site, controller, reason)
        self._ack(site, controller, snapshot_id, accepted=False, reason=reason)

    def _ack(self, site: str, controller: str, snapshot_id: str | None, *, accepted: bool, **extra: Any) -> None:
        reason = str(extra.pop("reason", ""))
        message = {
            "schema": f"{PREFIX}/snapshot/ack",
            "site": site,
            "controller": controller,
            "ts": iso(self.clock()),
            "snapshot_id": snapshot_id,
            "optimizer": self.client_id,
            "accepted": accepted,
            "reason": reason[:1024],
            **extra,
        }
        self._publish(f"{PREFIX}/{site}/{controller}/snapshot/ack", message)

    def _publish(self, topic: str, message: Mapping[str, Any]) -> bool:
        client = self._client
        if client is None or not client.is_connected:
            log.warning("not connected: %s not published (the site's next snapshot gets an answer)", topic)
            return False
        client.publish(topic, encode(message), qos=1)
        return True

    # -- solving -----------------------------------------------------------------------------------

    async def _worker(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._work.wait()
            self._work.clear()
            while not stop.is_set():
                snapshot, dropped = self.queue.take(self.clock())
                for old, why in dropped:
                    self._dropped(old, why)
                if snapshot is None:
                    break
                await self._solve(snapshot)

    async def _solve(self, snapshot: Snapshot) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            solution, inputs = await loop.run_in_executor(self._executor, self._plan, snapshot)
        except MpcError as err:
            if str(err).startswith("OSQP"):
                self.stats.solver_failures += 1
            self._refuse(snapshot.site, snapshot.controller, snapshot.id, str(err))
            return
        except Exception as err:  # a bug must cost one snapshot, not the service
            log.exception("snapshot %s of %s/%s: internal error", snapshot.id, *snapshot.key)
            self._refuse(snapshot.site, snapshot.controller, snapshot.id, f"internal error: {type(err).__name__}")
            return
        solve_s = time.perf_counter() - started
        self.stats.solve_s.append(solve_s)
        plan_id = f"p-{snapshot.id}"
        plan = plan_message(snapshot, inputs, solution, plan_id=plan_id, created_ts=self.clock())
        if not self._publish(f"{PREFIX}/{snapshot.site}/{snapshot.controller}/plan", plan):
            return
        self.stats.solved += 1
        log.info(
            "snapshot %s of %s/%s: plan %s (%d steps, %s) in %.3f s",
            snapshot.id,
            snapshot.site,
            snapshot.controller,
            plan_id,
            inputs.n_steps,
            solution.status,
            solve_s,
        )
        self._ack(
            snapshot.site, snapshot.controller, snapshot.id, accepted=True, plan_id=plan_id, solve_s=round(solve_s, 4)
        )

    def _plan(self, snapshot: Snapshot) -> tuple[Any, Any]:
        """In the solver thread: structure, problem (cached), inputs, solve."""
        site = planning_site(snapshot)
        problem = self.problems.get(snapshot.structure_hash, site)
        inputs = plan_inputs(snapshot, site, self.settings, self.prices)
        return problem.solve(inputs), inputs

    # -- statistics --------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        q = self.queue.stats
        p50 = self.stats.solve_p50_s()
        return {
            "connected": self.stats.connected,
            "received": self.stats.received,
            "solved": self.stats.solved,
            "duplicates": q.duplicates,
            "superseded": q.superseded,
            "too_old": q.too_old,
            "rejected": self.stats.rejected,
            "solver_failures": self.stats.solver_failures,
            "waiting": len(self.queue),
            "problems_built": self.problems.built,
            "solve_p50_s": None if p50 is None else round(p50, 4),
        }

    def log_stats(self, when: str = "stats") -> None:
        log.info("%s: %s", when, " ".join(f"{k}={v}" for k, v in self.report().items()))

    async def _report_every(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.config.stats_interval_s)
            if not stop.is_set():
                self.log_stats()


# -- the command -------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "the cloud optimiser: site snapshots in over MQTT (shared subscription), plans out"
    parser.add_argument("--config", required=True, help="optimizer YAML file (docs/optimizer.md)")


def main(args: argparse.Namespace) -> int:
    from hil.data import DataError, load_prices

    try:
        config = load_optimizer_config(args.config)
    except OptimizerConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    logging.getLogger().setLevel(config.log_level)
    try:
        prices = load_prices(Path(config.price_csv) if config.price_csv is not None else None)
    except DataError as err:
        print(f"error: price_csv: {err}", file=sys.stderr)
        return 3
    service = OptimizerService(config, prices=prices)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await service.run(stop)

    asyncio.run(serve())
    return 0
