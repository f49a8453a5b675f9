"""The ``mqtt`` section of a site file: where the cloud broker is, how to log in, how hard to retry.

Validated like the rest of the site file (``controller.config``): unknown fields are errors, numbers are
bounded, and a file that does not exist is named by its field. The site id comes from ``site.id``; the
controller id names this controller among the site's controllers. Reference: ``docs/mqtt.md``.
"""

from __future__ import annotations

import random
import ssl
from pathlib import Path
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller.config import Id

PositiveS = Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MqttTlsConfig(_Model):
    ca_file: Annotated[str, Field(min_length=1)]
    """PEM CA (or bundle) the broker's certificate must chain to."""
    cert_file: str | None = None
    """PEM client certificate, for brokers that authenticate clients by certificate."""
    key_file: str | None = None

    @model_validator(mode="after")
    def _cert_and_key(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self

    def context(self) -> ssl.SSLContext:
        """A client context: TLS 1.2+, the broker's name (or IP) verified against its certificate."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


class OutboxConfig(_Model):
    path: Annotated[str, Field(min_length=1)] = "var/plaza-ems/mqtt-outbox.sqlite"
    max_rows: Annotated[int, Field(ge=100, le=10_000_000)] = 200_000
    max_bytes: Annotated[int, Field(ge=65_536, le=10 * 2**30)] = 128 * 2**20
    telemetry_offline_interval_s: PositiveS = 60.0
    """While offline, one telemetry message in this many seconds is kept for replay."""


class BrokerLogin(_Model):
    """Where a broker is, how to log in and how hard to retry: shared by the site's link and the optimiser."""

    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 8883
    tls: MqttTlsConfig | None = None
    """None: plain TCP (a lab only; SPEC F23 wants TLS in the field)."""
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    """A file holding the password (first line); preferred over ``password`` in a config file."""
    client_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    connect_timeout_s: PositiveS = 10.0
    backoff_first_s: PositiveS = 1.0
    backoff_cap_s: PositiveS = 300.0

    @model_validator(mode="after")
    def _credentials(self) -> Self:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise ValueError("a password needs a username")
        if self.backoff_cap_s < self.backoff_first_s:
            raise ValueError("backoff_cap_s must be at least backoff_first_s")
        return self

    def password_value(self) -> str | None:
        """The password, read from ``password_file`` when given (without its line end)."""
        if self.password_file is not None:
            text = Path(self.password_file).read_text(encoding="utf-8")
            return text.splitlines()[0] if text else ""
        return self.password

    def backoff_s(self, failures: int, rng: random.Random) -> float:
        """Delay before attempt ``failures`` + 1: doubling from ``backoff_first_s`` to the cap, 50-100 % of it.

        The jitter keeps a fleet that lost its broker from reconnecting in step.
        """
        ceiling = min(self.backoff_cap_s, self.backoff_first_s * 2.0 ** max(0, failures - 1))
        return ceiling * rng.uniform(0.5, 1.0)


class MqttConfig(BrokerLogin):
    controller: Id = "main"
    client_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    """Default ``plaza-{site}-{controller}``; must be stable across restarts for the persistent session."""
    session_expiry_s: Annotated[int, Field(ge=0, le=0xFFFFFFFF)] = 7 * 86_400
    telemetry_interval_s: PositiveS = 10.0
    snapshot_interval_s: PositiveS = 300.0
    """How often the controller publishes a site snapshot for the optimiser."""
    snapshot_debounce_s: PositiveS = 30.0
    """A session start/stop or a departure/priority command brings the next snapshot forward, but no
    sooner than this after the last one (a burst of arrivals makes one snapshot, not ten)."""
    plan_stale_after_s: PositiveS = 60.0
    """With the link down this long, the plan in force is dropped and the local fallback schedule decides."""
    max_payload_bytes: Annotated[int, Field(ge=1024, le=16 * 2**20)] = 256 * 1024
    inbound_queue_size: Annotated[int, Field(ge=1, le=10_000)] = 64
    outbox: OutboxConfig = OutboxConfig()

    def client_id_for(self, site_id: str) -> str:
        return self.client_id or f"plaza-{site_id}-{self.controller}"
