"""``plaza-ems bench opcua``: what the OPC UA publish step costs the scan cycle on a large site.

A generated site (``bench_site_config``, five levels) runs the real control program on the benchmark's
own clock, with the maintenance server listening on 127.0.0.1 and one real client subscribed to every
connector's current and setpoint. Every cycle, ``change_pct`` of the connectors draw a new current (all
of them at 100 %: the worst case). The figures are the scan thread's publish step (alarm book, value
diff, hand-over), the control logic for comparison, and what the server thread wrote.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from asyncua import Client, ua

from controller.config import validate_config
from controller.image import ConnectorReading, ContactReading, InputSnapshot, MeterReading, freeze
from controller.program import ControlProgram
from controller.scan import CycleCollector, CycleStats, percentile
from controller.site import compile_site
from drivers.opcua.config import hash_password, opcua_config
from drivers.opcua.server import NAMESPACE_URI
from drivers.opcua.values import ControllerInfo
from plaza_ems.bench import bench_site_config
from plaza_ems.maintenance import Maintenance, software_version

BENCH_PASSWORD = "bench"


async def _client_subscribe(url: str, connector_ids: list[str], cert_dir: Path) -> tuple[Client, Any, list[int]]:
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    cert, key = cert_dir / "bench-cert.der", cert_dir / "bench-key.pem"
    await setup_self_signed_certificate(
        key, cert, "urn:plaza-ems:bench", "localhost", [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "bench"}
    )
    client = Client(url, timeout=30)
    client.application_uri = "urn:plaza-ems:bench"
    client.set_user("bench")
    client.set_password(BENCH_PASSWORD)
    await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}")
    await client.connect()
    idx = await client.get_namespace_index(NAMESPACE_URI)
    received = [0]

    class Handler:
        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            received[0] += 1

    subscription = await client.create_subscription(100, Handler())
    nodes = [
        client.get_node(ua.NodeId(f"Connector.{c}.{v}", idx))
        for c in connector_ids
        for v in ("CurrentL1A", "SetpointA")
    ]
    await subscription.subscribe_data_change(nodes, queuesize=1)
    return client, subscription, received


def bench_opcua(connectors: int, cycles: int, change_pct: float, seed: int = 7) -> dict[str, Any]:
    raw = bench_site_config(connectors, 5, seed)
    raw["opcua"] = {
        "host": "127.0.0.1",
        "port": 0,
        "users": [
            {"name": "bench", "role": "viewer", "password_hash": hash_password(BENCH_PASSWORD, iterations=10_000)}
        ],
    }
    with tempfile.TemporaryDirectory(prefix="plaza-bench-opcua-") as work:
        return asyncio.run(_bench(raw, Path(work), cycles, change_pct, seed))


async def _bench(raw: dict[str, Any], work: Path, cycles: int, change_pct: float, seed: int) -> dict[str, Any]:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        raw["opcua"]["port"] = sock.getsockname()[1]
    site = compile_site(validate_config(raw, "bench").config)
    config = opcua_config(site.config.opcua, "bench")
    maintenance = Maintenance(config, site, work, None, ControllerInfo(software_version(), "bench"))
    started = time.perf_counter()
    maintenance.server.start(wait_s=600)
    startup_s = time.perf_counter() - started
    connector_ids = [c.id for c in site.connectors]
    client, _, received = await _client_subscribe(maintenance.server.url, connector_ids, work)
    program = ControlProgram(site)
    stats = CycleStats(site.period_s)
    rng = random.Random(seed)
    snapshot = InputSnapshot()
    ids = tuple(connector_ids)
    online = {d.id: True for d in site.config.devices}
    logic: list[float] = []
    publish: list[float] = []
    t = time.time()
    draw = {c: rng.uniform(6.0, 16.0) for c in connector_ids}
    collector = CycleCollector()
    try:
        for n in range(cycles):
            t += site.period_s
            for meter in site.config.meters:
                load = rng.uniform(0.0, 20.0)
                snapshot.meters[meter.id] = MeterReading((load, load * 0.8, load * 1.1), load * 690.0, t)
            for conn in site.connectors:
                if n == 0 or rng.random() * 100.0 < change_pct:
                    draw[conn.id] = round(rng.uniform(6.0, 16.0), 1)
                a = draw[conn.id]
                phase_a = (a, a if len(conn.rotation) == 3 else 0.0, a if len(conn.rotation) == 3 else 0.0)
                snapshot.connectors[conn.id] = ConnectorReading("C2", phase_a, a * 230.0, 1000.0 + n, None, t)
            snapshot.contacts["fire"] = ContactReading(True, t)
            maintenance.refresh(snapshot, t)
            image = freeze(snapshot, t, site.stale_after_s, ids, ())
            t0 = time.perf_counter()
            output = program.step(image)
            t1 = time.perf_counter()
            maintenance.after_cycle(image, output, stats, online)
            t2 = time.perf_counter()
            stats.record(logic_s=t1 - t0, cycle_s=t2 - t0, jitter_s=0.0, overran=False)
            logic.append(t1 - t0)
            if n > 0:  # the first publish sends every value once
                publish.append(t2 - t1)
            collector.after_cycle()
            # The scan loop sleeps between cycles; this gives the server thread the same room.
            await asyncio.sleep(site.period_s / 10)
        await asyncio.sleep(1.0)
    finally:
        collector.close()
        await client.disconnect()
        maintenance.stop()
    server = maintenance.server.stats
    return {
        "connectors": len(site.connectors),
        "variables": maintenance.layout.variable_count(),
        "cycles": cycles,
        "change_pct": change_pct,
        "startup_s": round(startup_s, 2),
        "logic_p50_ms": round(percentile(logic, 50) * 1000.0, 3),
        "logic_p99_ms": round(percentile(logic, 99) * 1000.0, 3),
        "publish_p50_ms": round(percentile(publish, 50) * 1000.0, 3),
        "publish_p99_ms": round(percentile(publish, 99) * 1000.0, 3),
        "publish_max_ms": round(max(publish) * 1000.0, 3),
        "values_written_per_cycle": round(server["values_written"] / max(1, cycles), 1),
        "batches_coalesced": server["coalesced"],
        "client_notifications": received[0],
    }
