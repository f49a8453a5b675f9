"""The maintenance OPC UA server (SPEC F21, F23): the site as typed objects, alarms as events, operator methods.

The server runs asyncua on a thread of its own with its own event loop, so a client browsing 10 000
nodes or a burst of log-ins never delays a scan cycle; the cycle hands over one batch of changed
values per cycle (``publish``) and the server thread writes them into the address space, where
subscriptions pick them up. Method calls go the other way: the handler checks the caller's role,
checks the arguments, hands the command to the scan cycle's side (``submit``) and waits for its result.

Security: Basic256Sha256 Sign and SignAndEncrypt endpoints with the configured certificate or one
generated into the state directory (renewed when it expires); users log in by name and password
(PBKDF2 hashes from the config) and get the role ``viewer`` or ``operator``; nobody writes values.
Anonymous sessions and the None endpoint exist only when the config allows them for a lab.
The address space is described in ``docs/opcua.md``.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import ipaddress
import logging
import math
import socket
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Node, Server, ua
from asyncua.crypto.cert_gen import dump_private_key_as_pem, generate_private_key, generate_self_signed_app_certificate
from asyncua.crypto.permission_rules import ADMIN_TYPES, SimpleRoleRuleset, User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.uacrypto import check_certificate
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.internal_session import InternalSession
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller.alarms import AlarmDef, AlarmState, AlarmTransition
from controller.image import Quality
from controller.interlocks import EMERGENCY_STOP, FIRE
from controller.operator import CommandResult, OperatorCommand
from controller.site import Site
from drivers.opcua.config import OpcuaConfig, verify_password
from drivers.opcua.values import BOOLEAN, DOUBLE, STRING, TYPES, UINT32, ObjectUpdate, SiteLayout, Var

log = logging.getLogger("drivers.opcua")

NAMESPACE_URI = "urn:plaza-ems:ua"
"""The namespace of the plaza-ems types and of every site object (string NodeIds, stable across restarts)."""

DATETIME = "DateTime"
_VARIANT = {
    DOUBLE: ua.VariantType.Double,
    STRING: ua.VariantType.String,
    BOOLEAN: ua.VariantType.Boolean,
    UINT32: ua.VariantType.UInt32,
    DATETIME: ua.VariantType.DateTime,
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DEFAULT: dict[str, Any] = {DOUBLE: 0.0, STRING: "", BOOLEAN: False, UINT32: 0, DATETIME: _EPOCH}
_UNECE = "http://www.opcfoundation.org/UA/units/un/cefact"
_UNITS: dict[str, tuple[int, str]] = {
    # UNECE Recommendation 20 common codes, as OPC UA Part 8 encodes them (UnitId = code as big-endian bytes).
    "A": (4279632, "ampere"),
    "V": (5655636, "volt"),
    "W": (5723220, "watt"),
    "kWh": (4937544, "kilowatt hour"),
    "%": (20529, "percent"),
    "ms": (4403027, "millisecond"),
    "s": (5457219, "second"),
}
_STATUS = {
    Quality.GOOD: ua.StatusCode(ua.StatusCodes.Good),
    Quality.STALE: ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue),
    Quality.BAD: ua.StatusCode(ua.StatusCodes.BadNoCommunication),
}
_GOOD = ua.StatusCode(ua.StatusCodes.Good)

ALARM_VARS: tuple[Var, ...] = (
    Var("Active", BOOLEAN, description="The condition holds now"),
    Var("Acked", BOOLEAN, description="Acknowledged by an operator since it was last raised"),
    Var("Severity", UINT32, description="1..1000"),
    Var("Message", STRING),
    Var("Source", STRING, description="The latch, device, node or controller it is about"),
    Var("Since", DATETIME, description="When it was last raised"),
    Var("AckedBy", STRING),
)
"""The state variables of each alarm object under Site/Alarms (the events carry the same)."""

CALLER: contextvars.ContextVar[User | None] = contextvars.ContextVar("opcua_caller", default=None)
"""The user of the request being processed: asyncua hands method handlers no session, but its
permission check runs in the same task just before the call, and sets this."""

Submit = Callable[[OperatorCommand], Future[CommandResult]]


class SiteRuleset(SimpleRoleRuleset):  # type: ignore[misc]
    """Who may send which request: everybody with a session reads, browses, subscribes and calls (the
    method handlers check roles themselves, so a refusal can say which method and be logged); nobody
    writes attributes or changes the address space."""

    _DENIED = frozenset(ua.NodeId(i) for i in (*ADMIN_TYPES, ua.ObjectIds.WriteRequest_Encoding_DefaultBinary))

    def check_validity(self, user: Any, action_type_id: Any, body: Any) -> bool:
        CALLER.set(user)
        return action_type_id not in self._DENIED


@dataclass
class SiteUser(User):  # type: ignore[misc]
    site_role: str = "viewer"


class SiteUserManager:
    """Names and PBKDF2 hashes from the config; a successful check is remembered (by a SHA-256 of the
    password), so reconnects cost no second derivation."""

    def __init__(self, config: OpcuaConfig) -> None:
        self.users = {u.name: u for u in config.users}
        self.allow_anonymous = config.allow_anonymous
        self._verified: dict[str, bytes] = {}

    def get_user(
        self, iserver: Any, username: str | None = None, password: str | None = None, certificate: Any = None
    ) -> User | None:
        if username is None:
            if self.allow_anonymous and certificate is None:
                return SiteUser(role=UserRole.Anonymous, name="anonymous", site_role="viewer")
            log.warning("OPC UA log-in refused: anonymous sessions are not allowed")
            return None
        user = self.users.get(username)
        if user is None or password is None:
            log.warning("OPC UA log-in refused: unknown user %r", username)
            return None
        fingerprint = hashlib.sha256(f"{username}\0{password}".encode()).digest()
        if self._verified.get(username) != fingerprint:
            if not verify_password(password, user.password_hash):
                log.warning("OPC UA log-in refused: wrong password for %r", username)
                return None
            self._verified[username] = fingerprint
        log.info("OPC UA log-in: %s (%s)", username, user.role)
        return SiteUser(role=UserRole.User, name=username, site_role=user.role)


CERT_DAYS = 730


def own_certificate(cert_path: Path, key_path: Path, application_uri: str, host: str, site_id: str) -> None:
    """Make the server's self-signed certificate unless a valid one for this URI and host is there.

    Its subjectAltName holds the application URI, this machine's host name, ``localhost`` and the
    listening address, so clients that check the host name (UaExpert does) accept it once trusted.
    A new certificate must be trusted again by the clients: it is made only when the old one has
    expired or no longer fits.
    """
    hostname = socket.gethostname()
    if cert_path.is_file() and key_path.is_file():
        existing = x509.load_der_x509_certificate(cert_path.read_bytes())
        if check_certificate(existing, application_uri, hostname):
            return
        log.warning("OPC UA server certificate %s has expired or does not fit: making a new one", cert_path)
    key = generate_private_key()
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(application_uri),
        x509.DNSName(hostname),
        x509.DNSName("localhost"),
    ]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    cert = generate_self_signed_app_certificate(
        key,
        f"plaza-ems {site_id}",
        {"organizationName": "plaza-ems"},
        names,
        extended=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        days=CERT_DAYS,
    )
    key_path.write_bytes(dump_private_key_as_pem(key))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    log.info("OPC UA server certificate made: %s (trust it once in each client)", cert_path)


def _status(name: str) -> ua.StatusCode:
    return ua.StatusCode(getattr(ua.StatusCodes, name, ua.StatusCodes.BadUnexpectedError))


def _time(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class OpcuaServer:
    def __init__(
        self,
        config: OpcuaConfig,
        site: Site,
        layout: SiteLayout,
        alarms: Sequence[AlarmDef],
        submit: Submit,
        state_dir: Path,
        software_version: str,
    ) -> None:
        self.config = config
        self.site = site
        self.layout = layout
        self.alarm_defs = tuple(alarms)
        self.submit = submit
        self.state_dir = state_dir
        self.software_version = software_version
        self.application_uri = config.application_uri or f"urn:plaza-ems:{site.id}"
        self.url = f"opc.tcp://{config.host}:{config.port}{config.path}"
        self.ready = threading.Event()
        self.stats = {"batches": 0, "values_written": 0, "events": 0, "method_calls": 0, "coalesced": 0}
        self.error: BaseException | None = None
        """Why the server failed to start, if it did."""
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._pending: list[tuple[list[ObjectUpdate], list[AlarmTransition]]] = []
        self._lock = threading.Lock()
        self._server: Server | None = None
        self._ids: list[tuple[ua.NodeId, ...]] = []
        self._alarm_ids: dict[str, tuple[ua.NodeId, ...]] = {}
        self._event: Any = None
        self.idx = 0

    # -- the controller's side -------------------------------------------------------------------

    def start(self, wait_s: float | None = 60.0) -> None:
        """Start the server thread; with ``wait_s``, wait until it listens (or raise what stopped it).

        The controller starts it without waiting: building a large site's address space takes seconds,
        and the scan cycle must not wait for a maintenance interface. ``ready`` is set once it listens
        or has failed (``error`` says which)."""
        self._thread = threading.Thread(target=self._run, name="opcua", daemon=True)
        self._thread.start()
        if wait_s is None:
            return
        if not self.ready.wait(wait_s):
            raise RuntimeError(f"OPC UA server did not start within {wait_s:.0f} s")
        if self.error is not None:
            raise RuntimeError(f"OPC UA server failed to start: {self.error}") from self.error

    @property
    def listening(self) -> bool:
        return self.ready.is_set() and self.error is None

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    def publish(self, updates: list[ObjectUpdate], transitions: list[AlarmTransition]) -> None:
        """Hand one cycle's changes to the server thread (thread-safe, returns at once)."""
        if not (updates or transitions) or self._loop is None or self._wake is None:
            return
        with self._lock:
            self._pending.append((updates, transitions))
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:
            return  # the loop has closed: the server is stopping

    # -- the server thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:
            if not self.ready.is_set():
                self.error = err
                self.ready.set()
                log.error("OPC UA server failed to start: %s (the controller runs on without it)", err)
            else:
                log.exception("OPC UA server stopped")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        server = self._server = await self._make_server()
        await self._build(server)
        await server.start()
        log.info("OPC UA server listening on %s (%d variables)", self.url, self.layout.variable_count())
        self.ready.set()
        writer = asyncio.create_task(self._writer())
        try:
            await self._stop.wait()
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            await server.stop()

    async def _make_server(self) -> Server:
        config = self.config
        InternalSession.max_connections = config.max_sessions
        server = Server(user_manager=SiteUserManager(config))
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name(f"plaza-ems {self.site.id}")
        await server.set_application_uri(self.application_uri)
        await server.set_build_info(
            product_uri="urn:plaza-ems",
            manufacturer_name="plaza-ems",
            product_name="plaza-ems site controller",
            software_version=self.software_version,
            build_number=self.software_version,
            build_date=datetime.now(UTC),
        )
        cert, key = self._certificate_files()
        if config.certificate is None:
            await asyncio.to_thread(own_certificate, cert, key, self.application_uri, config.host, self.site.id)
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
        policies = [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt, ua.SecurityPolicyType.Basic256Sha256_Sign]
        tokens: list[type] = [ua.UserNameIdentityToken]
        if config.allow_anonymous:
            policies.append(ua.SecurityPolicyType.NoSecurity)
            tokens.append(ua.AnonymousIdentityToken)
            log.warning("OPC UA: anonymous sessions and the unencrypted None endpoint are on (lab only)")
        server.set_security_policy(policies, permission_ruleset=SiteRuleset())
        server.set_identity_tokens(tokens)
        if config.trusted_clients is not None:
            store = TrustStore([Path(config.trusted_clients)], [])
            await store.load()
            validator = CertificateValidator(
                CertificateValidatorOptions.BASIC_VALIDATION | CertificateValidatorOptions.PEER_CLIENT, store
            )
            server.set_certificate_validator(validator)
        self.idx = await server.register_namespace(NAMESPACE_URI)
        return server

    def _certificate_files(self) -> tuple[Path, Path]:
        if self.config.certificate is not None and self.config.private_key is not None:
            return Path(self.config.certificate), Path(self.config.private_key)
        folder = self.state_dir / "opcua"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / "server-cert.der", folder / "server-key.pem"

    async def _build(self, server: Server) -> None:
        idx = self.idx
        types = await self._types(server)
        site_obj = await server.nodes.objects.add_object(ua.NodeId("Site", idx), ua.QualifiedName("Site", idx))
        await site_obj.write_attribute(
            ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(f"Site {self.site.id}")))
        )
        await site_obj.add_property(ua.NodeId("Site.SiteId", idx), ua.QualifiedName("SiteId", idx), self.site.id)
        nodes: dict[str, Node] = {"Site": site_obj}
        for spec in self.layout.objects:
            parent = nodes[spec.parent]
            obj = await parent.add_object(
                ua.NodeId(spec.node_id, idx), ua.QualifiedName(spec.browse_name, idx), objecttype=types[spec.type_name]
            )
            if spec.description:
                await obj.write_attribute(
                    ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(spec.description)))
                )
            nodes[spec.node_id] = obj
        self._ids = [
            tuple(ua.NodeId(f"{spec.node_id}.{var.name}", idx) for var in TYPES[spec.type_name])
            for spec in self.layout.objects
        ]
        await self._alarms(server, site_obj, types["AlarmType"])
        await self._methods(site_obj)
        generator = await server.get_event_generator(ua.ObjectIds.AlarmConditionType, site_obj)
        self._event = generator

    async def _types(self, server: Server) -> dict[str, ua.NodeId]:
        idx = self.idx
        out: dict[str, ua.NodeId] = {}
        all_types = {**TYPES, "AlarmType": ALARM_VARS}
        for type_name, variables in all_types.items():
            type_node = await server.nodes.base_object_type.add_object_type(
                ua.NodeId(f"Types.{type_name}", idx), ua.QualifiedName(type_name, idx)
            )
            for var in variables:
                await self._type_variable(type_node, f"Types.{type_name}", var)
            out[type_name] = type_node.nodeid
        return out

    async def _type_variable(self, type_node: Node, prefix: str, var: Var) -> None:
        idx = self.idx
        node = await type_node.add_variable(
            ua.NodeId(f"{prefix}.{var.name}", idx),
            ua.QualifiedName(var.name, idx),
            ua.Variant(_DEFAULT[var.data_type], _VARIANT[var.data_type]),
        )
        await node.set_modelling_rule(True)
        if var.description:
            await node.write_attribute(
                ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(var.description)))
            )
        if var.unit is not None:
            unit_id, description = _UNITS[var.unit]
            eu = ua.EUInformation(
                NamespaceUri=_UNECE,
                UnitId=unit_id,
                DisplayName=ua.LocalizedText(var.unit),
                Description=ua.LocalizedText(description),
            )
            prop = await node.add_property(
                ua.NodeId(f"{prefix}.{var.name}.EngineeringUnits", idx), ua.QualifiedName("EngineeringUnits", 0), eu
            )
            await prop.set_modelling_rule(True)

    async def _alarms(self, server: Server, site_obj: Node, alarm_type: ua.NodeId) -> None:
        idx = self.idx
        folder = await site_obj.add_folder(ua.NodeId("Alarms", idx), ua.QualifiedName("Alarms", idx))
        for alarm in self.alarm_defs:
            await folder.add_object(
                ua.NodeId(f"Alarm.{alarm.id}", idx), ua.QualifiedName(alarm.id, idx), objecttype=alarm_type
            )
            ids = tuple(ua.NodeId(f"Alarm.{alarm.id}.{var.name}", idx) for var in ALARM_VARS)
            self._alarm_ids[alarm.id] = ids
            await self._write_alarm(alarm, AlarmState(), datetime.now(UTC))

    async def _write_alarm(self, alarm: AlarmDef, state: AlarmState, when: datetime) -> None:
        assert self._server is not None
        aspace = self._server.iserver.aspace
        values = (
            state.active,
            state.acked,
            alarm.severity,
            state.message or alarm.text,
            alarm.source,
            _time(state.since_ts) if state.since_ts is not None else _EPOCH,
            state.acked_by,
        )
        for node_id, var, value in zip(self._alarm_ids[alarm.id], ALARM_VARS, values, strict=True):
            variant = ua.Variant(value, _VARIANT[var.data_type])
            await aspace.write_attribute_value(
                node_id,
                ua.AttributeIds.Value,
                ua.DataValue(variant, StatusCode=_GOOD, SourceTimestamp=when, ServerTimestamp=datetime.now(UTC)),
            )

    async def _methods(self, site_obj: Node) -> None:
        idx = self.idx

        def arg(name: str, data_type: int, text: str) -> ua.Argument:
            return ua.Argument(
                Name=name, DataType=ua.NodeId(data_type), ValueRank=-1, Description=ua.LocalizedText(text)
            )

        result = [arg("Result", ua.ObjectIds.String, "What was done")]
        string, boolean = ua.ObjectIds.String, ua.ObjectIds.Boolean
        methods: list[tuple[str, Callable[..., Any], list[ua.Argument]]] = [
            ("ResetFireLatch", self._reset_fire, []),
            ("ResetEmergencyStopLatch", self._reset_estop, []),
            (
                "AcknowledgeAlarm",
                self._acknowledge,
                [arg("AlarmId", string, "Alarm name, as under Site/Alarms"), arg("Comment", string, "Why")],
            ),
            (
                "SetConnectorAvailability",
                self._availability,
                [arg("ConnectorId", string, "Connector id"), arg("Available", boolean, "False: out of service")],
            ),
            (
                "SetMaintenanceMode",
                self._maintenance,
                [arg("NodeId", string, "Tree node id"), arg("Enabled", boolean, "True: hold everything below at 0")],
            ),
        ]
        for name, handler, inputs in methods:
            await site_obj.add_method(
                ua.NodeId(f"Site.{name}", idx), ua.QualifiedName(name, idx), handler, inputs, result
            )

    # -- writing values ---------------------------------------------------------------------------

    async def _writer(self) -> None:
        assert self._wake is not None
        assert self._server is not None
        aspace = self._server.iserver.aspace
        value_attr = ua.AttributeIds.Value
        layout_types = [[_VARIANT[v.data_type] for v in TYPES[o.type_name]] for o in self.layout.objects]
        measured = [[v.measured for v in TYPES[o.type_name]] for o in self.layout.objects]
        while True:
            await self._wake.wait()
            self._wake.clear()
            with self._lock:
                pending, self._pending = self._pending, []
            if len(pending) > 1:
                self.stats["coalesced"] += len(pending) - 1
            latest: dict[int, tuple[ObjectUpdate, set[int]]] = {}
            for updates, _ in pending:
                for update in updates:
                    seen = latest.get(update.object_index)
                    changed = set(update.changed) if seen is None else seen[1] | set(update.changed)
                    latest[update.object_index] = (update, changed)
            now = datetime.now(UTC)
            written = 0
            for index, (update, changed) in latest.items():
                ids = self._ids[index]
                variants = layout_types[index]
                is_measured = measured[index]
                status = _STATUS[update.quality]
                source = _time(update.source_ts)
                cycle = _time(update.cycle_ts)
                for k in sorted(changed):
                    value = update.values[k]
                    if isinstance(value, float) and math.isnan(value):
                        value = None
                    dv = ua.DataValue(
                        ua.Variant(value, variants[k]) if value is not None else ua.Variant(None, ua.VariantType.Null),
                        StatusCode=status if is_measured[k] else _GOOD,
                        SourceTimestamp=source if is_measured[k] else cycle,
                        ServerTimestamp=now,
                    )
                    await aspace.write_attribute_value(ids[k], value_attr, dv)
                    written += 1
            for _, transitions in pending:
                for transition in transitions:
                    await self._alarm_event(transition)
            self.stats["batches"] += 1
            self.stats["values_written"] += written

    async def _alarm_event(self, transition: AlarmTransition) -> None:
        alarm, state = transition.alarm, transition.state
        when = _time(transition.ts)
        await self._write_alarm(alarm, state, when)
        event = self._event.event
        event.ConditionName = alarm.id
        event.SourceName = alarm.source
        event.Severity = alarm.severity
        event.Message = ua.LocalizedText(f"{alarm.text}: {state.message}" if state.message else alarm.text)
        event.Retain = state.retained
        event.Comment = ua.LocalizedText(transition.comment)
        event.ClientUserId = state.acked_by
        event.ActiveState = ua.LocalizedText("Active" if state.active else "Inactive")
        setattr(event, "ActiveState/Id", state.active)
        event.AckedState = ua.LocalizedText("Acknowledged" if state.acked else "Unacknowledged")
        setattr(event, "AckedState/Id", state.acked)
        event.EnabledState = ua.LocalizedText("Enabled")
        setattr(event, "EnabledState/Id", True)
        event.NodeId = self._alarm_node(alarm.id)
        await self._event.trigger(time_attr=when)
        self.stats["events"] += 1

    def _alarm_node(self, alarm_id: str) -> ua.NodeId:
        return ua.NodeId(f"Alarm.{alarm_id}", self.idx)

    # -- methods -----------------------------------------------------------------------------------

    async def _reset_fire(self, parent: ua.NodeId) -> Any:
        return await self._operator_call("ResetFireLatch", OperatorCommand("reset_latch", "", FIRE))

    async def _reset_estop(self, parent: ua.NodeId) -> Any:
        return await self._operator_call("ResetEmergencyStopLatch", OperatorCommand("reset_latch", "", EMERGENCY_STOP))

    async def _acknowledge(self, parent: ua.NodeId, *args: ua.Variant) -> Any:
        checked = _arguments(args, (ua.VariantType.String, ua.VariantType.String))
        if isinstance(checked, ua.CallMethodResult):
            return await self._refuse("AcknowledgeAlarm", checked)
        alarm_id, comment = checked
        return await self._operator_call(
            "AcknowledgeAlarm", OperatorCommand("acknowledge", "", str(alarm_id), comment=str(comment)[:512])
        )

    async def _availability(self, parent: ua.NodeId, *args: ua.Variant) -> Any:
        checked = _arguments(args, (ua.VariantType.String, ua.VariantType.Boolean))
        if isinstance(checked, ua.CallMethodResult):
            return await self._refuse("SetConnectorAvailability", checked)
        connector_id, available = checked
        return await self._operator_call(
            "SetConnectorAvailability", OperatorCommand("availability", "", str(connector_id), bool(available))
        )

    async def _maintenance(self, parent: ua.NodeId, *args: ua.Variant) -> Any:
        checked = _arguments(args, (ua.VariantType.String, ua.VariantType.Boolean))
        if isinstance(checked, ua.CallMethodResult):
            return await self._refuse("SetMaintenanceMode", checked)
        node_id, enabled = checked
        return await self._operator_call(
            "SetMaintenanceMode", OperatorCommand("maintenance", "", str(node_id), bool(enabled))
        )

    async def _refuse(self, method: str, result: ua.CallMethodResult) -> ua.CallMethodResult:
        self.stats["method_calls"] += 1
        log.warning("OPC UA %s by %s refused: bad arguments", method, _name(CALLER.get()))
        return result

    async def _operator_call(self, method: str, command: OperatorCommand) -> Any:
        self.stats["method_calls"] += 1
        user = CALLER.get()
        name = _name(user)
        if not isinstance(user, SiteUser) or user.site_role != "operator":
            log.warning("OPC UA %s by %s refused: needs the operator role", method, name)
            return ua.StatusCode(ua.StatusCodes.BadUserAccessDenied)
        command = OperatorCommand(command.kind, name, command.target, command.enabled, command.comment)
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(self.submit(command)), self.config.method_timeout_s)
        except TimeoutError:
            log.error(
                "OPC UA %s by %s: the scan cycle did not answer within %.1f s",
                method,
                name,
                self.config.method_timeout_s,
            )
            return ua.StatusCode(ua.StatusCodes.BadTimeout)
        log.info("OPC UA %s by %s: %s (%s)", method, name, result.message, result.status)
        if not result.ok:
            return ua.CallMethodResult(StatusCode=_status(result.status), OutputArguments=[])
        return [ua.Variant(result.message, ua.VariantType.String)]


def _name(user: User | None) -> str:
    if user is None:
        return "unknown"
    return user.name or "anonymous"


def _arguments(args: Sequence[ua.Variant], expected: Sequence[ua.VariantType]) -> list[Any] | ua.CallMethodResult:
    """The arguments' values when their number and types are right, else the result that says which are not."""
    if len(args) != len(expected):
        return ua.CallMethodResult(
            StatusCode=ua.StatusCode(
                ua.StatusCodes.BadArgumentsMissing if len(args) < len(expected) else ua.StatusCodes.BadTooManyArguments
            )
        )
    results = [
        _GOOD if isinstance(a, ua.Variant) and a.VariantType == t else ua.StatusCode(ua.StatusCodes.BadTypeMismatch)
        for a, t in zip(args, expected, strict=True)
    ]
    if any(not r.is_good() for r in results):
        return ua.CallMethodResult(
            StatusCode=ua.StatusCode(ua.StatusCodes.BadInvalidArgument), InputArgumentResults=results
        )
    return [a.Value for a in args]
