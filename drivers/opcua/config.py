"""The ``opcua`` section of a site file: the maintenance server's endpoint, certificate, users and roles.

Validated like the rest of the site file (``controller.config``): unknown fields are errors, numbers are
bounded, and every problem is named by its path. Passwords are never stored in the site file: each user
carries a PBKDF2-SHA256 hash made by ``plaza-ems opcua-password`` (``hash_password``). Reference:
``docs/opcua.md``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from controller.config import ConfigError, ConfigIssue

Role = Literal["viewer", "operator"]
"""Viewers browse, read and subscribe; operators may also call the operator methods."""

HASH_SCHEME = "pbkdf2-sha256"
HASH_ITERATIONS = 200_000
"""OWASP asks for 600 000 PBKDF2-SHA256 iterations; a log-in is checked on the OPC UA server's own
thread, and 200 000 (about 0.1 s here) keeps a burst of log-ins from taking seconds. Verified hashes are
cached, so a session that reconnects costs no second derivation."""
_MIN_ITERATIONS = 10_000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpcuaUser(_Model):
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")]
    role: Role
    password_hash: Annotated[str, Field(min_length=1, max_length=512)]
    """``pbkdf2-sha256$ITERATIONS$SALT$HASH`` (base64), from ``plaza-ems opcua-password``."""

    @model_validator(mode="after")
    def _hash_format(self) -> Self:
        parse_hash(self.password_hash)
        return self


class OpcuaConfig(_Model):
    host: Annotated[str, Field(min_length=1)] = "127.0.0.1"
    """The address to listen on; bind it to the maintenance network only (SPEC F23)."""
    port: Annotated[int, Field(ge=1, le=65535)] = 4840
    path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9_./-]*$")] = "/plaza-ems"
    application_uri: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    """Default ``urn:plaza-ems:{site id}``; must match the certificate's subjectAltName URI."""
    certificate: str | None = None
    """The server's certificate (PEM or DER); None: one is generated into the state directory."""
    private_key: str | None = None
    trusted_clients: str | None = None
    """A folder of client application certificates (PEM or DER) allowed to connect; None: any client
    certificate is accepted and users are authenticated by name and password only."""
    allow_anonymous: bool = False
    """A lab only: adds the unencrypted None endpoint and anonymous sessions with the viewer role."""
    users: list[OpcuaUser] = Field(default_factory=list)
    max_sessions: Annotated[int, Field(ge=1, le=1000)] = 20
    method_timeout_s: Annotated[float, Field(gt=0, le=60, allow_inf_nan=False)] = 5.0
    """How long an operator method waits for the scan cycle to carry it out."""

    @model_validator(mode="after")
    def _someone_can_log_in(self) -> Self:
        names = [u.name for u in self.users]
        if len(set(names)) != len(names):
            raise ValueError("user names must be unique")
        if not self.users and not self.allow_anonymous:
            raise ValueError("no users: add users (plaza-ems opcua-password) or, in a lab, allow_anonymous")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("certificate and private_key go together")
        return self


def opcua_config(raw: Any, source: str) -> OpcuaConfig:
    """The site file's ``opcua`` section as an ``OpcuaConfig`` (ConfigError with paths when invalid)."""
    try:
        config = OpcuaConfig.model_validate(raw)
    except ValidationError as err:
        issues: Sequence[ConfigIssue] = [
            ConfigIssue("opcua" + "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in e["loc"]), e["msg"])
            for e in err.errors()
        ]
        raise ConfigError(issues, source) from None
    missing = [
        ConfigIssue(f"opcua.{name}", f"file not found: {path}")
        for name, path in (("certificate", config.certificate), ("private_key", config.private_key))
        if path is not None and not os.path.isfile(path)
    ]
    if config.trusted_clients is not None and not os.path.isdir(config.trusted_clients):
        missing.append(ConfigIssue("opcua.trusted_clients", f"folder not found: {config.trusted_clients}"))
    if missing:
        raise ConfigError(missing, source)
    return config


def hash_password(password: str, *, iterations: int = HASH_ITERATIONS, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return f"{HASH_SCHEME}${iterations}${_b64(salt)}${_b64(digest)}"


def parse_hash(text: str) -> tuple[int, bytes, bytes]:
    """(iterations, salt, digest) of a stored hash; ValueError naming what is wrong."""
    parts = text.split("$")
    if len(parts) != 4 or parts[0] != HASH_SCHEME:
        raise ValueError(f"password_hash must look like {HASH_SCHEME}$ITERATIONS$SALT$HASH (plaza-ems opcua-password)")
    try:
        iterations = int(parts[1])
        salt = base64.b64decode(parts[2], validate=True)
        digest = base64.b64decode(parts[3], validate=True)
    except ValueError:
        raise ValueError("password_hash has a bad iteration count or base64 part") from None
    if iterations < _MIN_ITERATIONS or len(salt) < 8 or len(digest) != 32:
        raise ValueError(f"password_hash is too weak: at least {_MIN_ITERATIONS} iterations and an 8-byte salt")
    return iterations, salt, digest


def verify_password(password: str, stored: str) -> bool:
    iterations, salt, digest = parse_hash(stored)
    candidate = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return hmac.compare_digest(candidate, digest)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
