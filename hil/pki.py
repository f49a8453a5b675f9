"""Throwaway PKI for the TLS tests and the demo, made with the ``openssl`` command line (no Python dependency).

``make_pki(directory)`` writes a test CA, a server certificate for 127.0.0.1 (subjectAltName IP:127.0.0.1,
extendedKeyUsage serverAuth), client certificates CN=AC1 and CN=DC1 signed by that CA, and a client
certificate CN=AC1 signed by a second, unrelated CA. EC P-256 keys, valid for two days
(``days``: longer for the demo).
"""

from __future__ import annotations

import secrets
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = shutil.which("openssl")

CA_EXT = """basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""
SERVER_EXT = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""
CLIENT_EXT = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True, slots=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class Pki:
    ca: KeyPair
    server: KeyPair
    clients: dict[str, KeyPair]
    """By name: ``AC1``, ``DC1`` (signed by ``ca``) and ``AC1-foreign`` (CN=AC1, signed by another CA)."""
    foreign_ca: KeyPair


def _openssl(*args: str | Path) -> None:
    assert OPENSSL is not None, "the openssl command line is needed"
    subprocess.run([OPENSSL, *map(str, args)], check=True, capture_output=True, timeout=30)


def _key(path: Path) -> Path:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    return path


def _sign(directory: Path, name: str, common_name: str, extensions: str, days: int, ca: KeyPair | None) -> KeyPair:
    """A new key and its certificate, signed by ``ca`` (None: self-signed, a CA of its own)."""
    key = _key(directory / f"{name}.key")
    cert = directory / f"{name}.pem"
    ext = directory / f"{name}.ext"
    ext.write_text(extensions, encoding="ascii")
    csr = directory / f"{name}.csr"
    _openssl("req", "-new", "-key", key, "-subj", f"/CN={common_name}", "-out", csr)
    signer = ("-signkey", key) if ca is None else ("-CA", ca.cert, "-CAkey", ca.key)
    _openssl(
        "x509", "-req", "-in", csr, *signer, "-days", str(days), "-sha256",
        "-set_serial", f"0x{secrets.token_hex(8)}", "-extfile", ext, "-out", cert,
    )  # fmt: skip
    return KeyPair(cert, key)


def make_pki(directory: Path, days: int = 2) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = _sign(directory, "ca", "plaza-ems test CA", CA_EXT, days, None)
    foreign = _sign(directory, "foreign-ca", "some other CA", CA_EXT, days, None)
    server = _sign(directory, "server", "127.0.0.1", SERVER_EXT, days, ca)
    clients = {
        "AC1": _sign(directory, "ac1", "AC1", CLIENT_EXT, days, ca),
        "DC1": _sign(directory, "dc1", "DC1", CLIENT_EXT, days, ca),
        "AC1-foreign": _sign(directory, "ac1-foreign", "AC1", CLIENT_EXT, days, foreign),
    }
    return Pki(ca, server, clients, foreign)


def client_context(pki: Pki, client: str | None = None) -> ssl.SSLContext:
    """A station's context: trusts the test CA, verifies 127.0.0.1, presents ``pki.clients[client]`` if given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca.cert))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client is not None:
        pair = pki.clients[client]
        context.load_cert_chain(str(pair.cert), str(pair.key))
    return context
