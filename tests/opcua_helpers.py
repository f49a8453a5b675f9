"""An OPC UA test rig: the control program on a cycle table, the real OPC UA server, real clients on loopback.

``OpcuaRig`` builds a site from YAML with an ``opcua`` section, starts the maintenance server on a free
loopback port (its own thread, as in ``plaza-ems run``) and runs cycles through ``tests.cycles.Plaza``
with the maintenance publish step after each. ``cycling`` runs cycles in the background of the test's
event loop so that method calls, which wait for the scan cycle, get answered. Clients connect with a
throwaway client certificate over Basic256Sha256 SignAndEncrypt.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import yaml
from asyncua import Client
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography.x509.oid import ExtendedKeyUsageOID

from controller.scan import CycleStats
from drivers.opcua.config import hash_password, opcua_config
from drivers.opcua.values import ControllerInfo
from hil.broker import free_port
from plaza_ems.maintenance import Maintenance
from tests.cycles import Plaza

PASSWORDS = {"olga": "operator-pw", "victor": "viewer-pw"}
TEST_ITERATIONS = 10_000
"""The lowest the config accepts: the tests log in often."""


def users() -> list[dict[str, str]]:
    return [
        {
            "name": "olga",
            "role": "operator",
            "password_hash": hash_password(PASSWORDS["olga"], iterations=TEST_ITERATIONS),
        },
        {
            "name": "victor",
            "role": "viewer",
            "password_hash": hash_password(PASSWORDS["victor"], iterations=TEST_ITERATIONS),
        },
    ]


class OpcuaRig:
    def __init__(self, site_yaml: str, state_dir: Path, **opcua: Any) -> None:
        self.port = free_port()
        section = {"host": "127.0.0.1", "port": self.port, "users": users(), **opcua}
        document = yaml.safe_load(site_yaml)
        document["opcua"] = section
        self.plaza = Plaza.from_yaml(yaml.safe_dump(document))
        site = self.plaza.site
        config = opcua_config(site.config.opcua, "test")
        self.maintenance = Maintenance(config, site, state_dir, None, ControllerInfo("9.9.9", "0123456789abcdef"))
        self.stats = CycleStats(site.period_s)
        self.online: dict[str, bool] = {d.id: True for d in site.config.devices}
        self.url = f"opc.tcp://127.0.0.1:{self.port}/plaza-ems"
        self.inputs: dict[str, Any] = {}
        """Readings applied by every background cycle (see ``cycling``)."""

    def start(self) -> None:
        self.maintenance.server.start(wait_s=120)

    def stop(self) -> None:
        self.maintenance.stop()

    def cycle(self, **inputs: Any) -> dict[str, float]:
        plaza = self.plaza
        self.maintenance.refresh(plaza.snapshot, plaza.t + plaza.site.period_s)
        setpoints = plaza.cycle(**inputs)
        assert plaza.image is not None
        assert plaza.last is not None
        self.stats.record(logic_s=0.001, cycle_s=0.002, jitter_s=0.0, overran=False)
        self.maintenance.after_cycle(plaza.image, plaza.last, self.stats, self.online)
        return setpoints

    @contextlib.asynccontextmanager
    async def cycling(self, period_s: float = 0.05) -> AsyncIterator[None]:
        """Run a cycle every ``period_s`` (with ``self.inputs``) while the block runs."""

        async def run() -> None:
            while True:
                self.cycle(**self.inputs)
                await asyncio.sleep(period_s)

        task = asyncio.create_task(run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def client_certificate(folder: Path) -> tuple[Path, Path]:
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    cert, key = folder / "client-cert.der", folder / "client-key.pem"
    await setup_self_signed_certificate(
        key, cert, "urn:plaza-ems:test-client", "localhost", [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "test"}
    )
    return cert, key


@contextlib.asynccontextmanager
async def connected(
    url: str,
    certs: tuple[Path, Path],
    user: str | None,
    password: str | None = None,
    mode: str = "SignAndEncrypt",
    configure: Callable[[Client], None] | None = None,
) -> AsyncIterator[Client]:
    client = Client(url, timeout=10)
    client.application_uri = "urn:plaza-ems:test-client"
    if user is not None:
        client.set_user(user)
        client.set_password(password if password is not None else PASSWORDS[user])
    if mode != "None":
        cert, key = certs
        await client.set_security_string(f"Basic256Sha256,{mode},{cert},{key}")
    if configure is not None:
        configure(client)
    async with client:
        yield client
