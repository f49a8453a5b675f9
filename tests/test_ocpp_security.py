"""OCPP security profiles 2 and 3 over loopback TLS, with a throwaway PKI made in a temporary directory.

Profile 2: wss:// + Basic auth (user = station id). Profile 3: wss:// with a client certificate whose
subject CN is the station id, signed by ``ocpp.tls_ca``; no password. Ports 19300-19349. Every test is
bounded to a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import websockets
from ocpp.v201 import call
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from controller.config import ConfigError, SiteConfig, parse_config
from drivers.ocpp201.csms import Csms
from drivers.ocpp201.stations import compile_stations
from hil.pki import OPENSSL, KeyPair, Pki, client_context, make_pki
from plaza_ems.cli import main
from tests.ocpp_helpers import Station, auth, output

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl command line makes the test certificates")

TIMEOUT_S = 5.0

SITE = """
site: {{id: ocpp-tls}}
ocpp: {ocpp}
tree:
  id: grid
  limit_a: 100
  children:
    - id: st1
      limit_a: 32
      connectors:
        - {{id: ac-1, fallback_current_a: 32}}
    - id: st2
      limit_a: 100
      connectors:
        - {{id: dc-1, type: dc, max_power_kw: 50, zero_pauses: false, fallback_current_a: 100}}
devices:
  - {{id: AC1, driver: ocpp201, connectors: [ac-1], options: {{password: secret-ac1}}}}
  - {{id: DC1, driver: ocpp201, connectors: [dc-1], options: {{password: secret-dc1}}}}
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def site_text(port: int, profile: int, pki: Pki | None, *, cert: bool = True, ca: bool = True) -> str:
    ocpp: dict[str, Any] = {"port": port, "security_profile": profile}
    if pki is not None and cert:
        ocpp |= {"tls_cert": str(pki.server.cert), "tls_key": str(pki.server.key)}
    if pki is not None and ca:
        ocpp["tls_ca"] = str(pki.ca.cert)
    return SITE.format(ocpp=json.dumps(ocpp))


def site(port: int, profile: int, pki: Pki) -> SiteConfig:
    return parse_config(site_text(port, profile, pki)).config


def ready(csms: Csms) -> None:
    """Hand over an empty cycle output: the controller has run, so boots are Accepted, not Pending."""
    csms.hand_over(output({}))


@asynccontextmanager
async def running(csms: Csms) -> AsyncIterator[Csms]:
    await csms.start()
    try:
        yield csms
    finally:
        await csms.stop()


def connect(
    url: str, *, ssl_context: ssl.SSLContext | None = None, headers: dict[str, str] | None = None
) -> websockets.connect:
    return websockets.connect(
        url,
        subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
        additional_headers=headers,
        ssl=ssl_context,
        open_timeout=3,
        ping_interval=None,
    )


async def boot(ws: ClientConnection, station_id: str) -> str:
    """BootNotification over ``ws``: the registration status the CSMS answers."""
    station = Station(station_id, ws)
    task = asyncio.create_task(station.start())
    try:
        result = await station.call(
            call.BootNotification(charging_station={"model": "t", "vendor_name": "t"}, reason="PowerUp")
        )
        return str(result.status)
    finally:
        task.cancel()


def tls_version(ws: ClientConnection) -> str:
    ssl_object = ws.transport.get_extra_info("ssl_object")
    assert isinstance(ssl_object, ssl.SSLObject)
    return str(ssl_object.version())


async def refused_status(url: str, ssl_context: ssl.SSLContext | None, headers: dict[str, str] | None) -> int:
    """The HTTP status of a refused WebSocket handshake (fails the test if the handshake is accepted)."""
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, ssl_context=ssl_context, headers=headers):
            pass
    return refused.value.response.status_code


async def handshake_fails(url: str, ssl_context: ssl.SSLContext | None) -> BaseException:
    """The error of a connection that fails below HTTP (TLS handshake): never an HTTP status, never open."""
    try:
        async with connect(url, ssl_context=ssl_context):
            pass
    except InvalidStatus as err:
        pytest.fail(f"expected a failed TLS handshake, got HTTP {err.response.status_code}")
    except Exception as err:  # websockets wraps some TLS errors (InvalidMessage), raises others
        return err
    pytest.fail("the connection was accepted")


def _chain(err: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


# -- profile 2: TLS + Basic auth ----------------------------------------------------------------------


def test_profile_2_station_with_its_password_boots_over_wss(pki: Pki) -> None:
    csms = Csms(site(19300, 2, pki))
    ready(csms)

    async def scenario() -> None:
        async with asyncio.timeout(TIMEOUT_S), running(csms):
            url = "wss://127.0.0.1:19300/ocpp/AC1"
            async with connect(url, ssl_context=client_context(pki), headers=auth("AC1", "secret-ac1")) as ws:
                assert tls_version(ws) in ("TLSv1.2", "TLSv1.3")
                assert await boot(ws, "AC1") == "Accepted"
                assert csms.stations["AC1"].booted

    asyncio.run(scenario())
    assert (csms.stats.connects, csms.stats.refused) == (1, 0)


@pytest.mark.parametrize(
    ("port", "path", "headers", "status"),
    [
        (19301, "AC1", auth("AC1", "wrong-pass"), 401),
        (19302, "AC1", None, 401),
        (19303, "DC1", auth("AC1", "secret-ac1"), 401),  # AC1's password does not open DC1
        (19304, "NOPE", auth("NOPE", "secret-ac1"), 404),
    ],
    ids=["wrong-password", "no-credentials", "other-station-credentials", "unknown-station"],
)
def test_profile_2_wrong_credentials_and_unknown_station_are_refused_over_wss(
    pki: Pki, port: int, path: str, headers: dict[str, str] | None, status: int
) -> None:
    csms = Csms(site(port, 2, pki))
    ready(csms)

    async def scenario() -> None:
        async with asyncio.timeout(TIMEOUT_S), running(csms):
            url = f"wss://127.0.0.1:{port}/ocpp/{path}"
            assert await refused_status(url, client_context(pki), headers) == status

    asyncio.run(scenario())
    assert (csms.stats.connects, csms.stats.refused) == (0, 1)


def test_profile_2_plain_ws_to_the_wss_endpoint_fails(pki: Pki) -> None:
    csms = Csms(site(19305, 2, pki))
    ready(csms)

    async def scenario() -> None:
        async with asyncio.timeout(TIMEOUT_S), running(csms):
            await handshake_fails("ws://127.0.0.1:19305/ocpp/AC1", None)
            # The endpoint is alive and speaks TLS: the same station over wss:// gets in.
            url = "wss://127.0.0.1:19305/ocpp/AC1"
            async with connect(url, ssl_context=client_context(pki), headers=auth("AC1", "secret-ac1")) as ws:
                assert await boot(ws, "AC1") == "Accepted"

    asyncio.run(scenario())
    assert csms.stats.connects == 1
    assert not csms.stations["DC1"].booted


def test_profile_2_server_certificate_is_checked_by_the_station(pki: Pki) -> None:
    """A station that trusts another CA refuses the CSMS: the server presents the configured certificate."""
    csms = Csms(site(19306, 2, pki))

    async def scenario() -> None:
        async with asyncio.timeout(TIMEOUT_S), running(csms):
            wrong_trust = ssl.create_default_context(cafile=str(pki.foreign_ca.cert))
            err = await handshake_fails("wss://127.0.0.1:19306/ocpp/AC1", wrong_trust)
            assert any(isinstance(e, ssl.SSLCertVerificationError) for e in _chain(err)), _chain(err)

    asyncio.run(scenario())
    assert csms.stats.connects == 0


# -- profile 3: TLS with station client certificates ------------------------------------------------


def test_profile_3_station_certificate_naming_the_station_boots_without_password(pki: Pki) -> None:
    csms = Csms(site(19310, 3, pki))
    ready(csms)

    async def scenario() -> None:
        url = "wss://127.0.0.1:19310/ocpp/AC1"
        async with (
            asyncio.timeout(TIMEOUT_S),
            running(csms),
            connect(url, ssl_context=client_context(pki, "AC1")) as ws,
        ):
            assert tls_version(ws) in ("TLSv1.2", "TLSv1.3")
            assert await boot(ws, "AC1") == "Accepted"
            assert csms.stations["AC1"].booted

    asyncio.run(scenario())
    assert (csms.stats.connects, csms.stats.refused) == (1, 0)


@pytest.mark.parametrize(
    ("port", "path", "client", "headers", "status"),
    [
        (19311, "AC1", "DC1", None, 401),
        (19312, "AC1", "DC1", auth("AC1", "secret-ac1"), 401),  # a password does not stand in for the CN
        (19313, "DC1", "AC1", None, 401),
        (19314, "NOPE", "AC1", None, 404),
    ],
    ids=["cn-of-another-station", "cn-of-another-station-with-password", "dc1-path-ac1-cert", "unknown-station"],
)
def test_profile_3_certificate_of_another_station_is_refused(
    pki: Pki, port: int, path: str, client: str, headers: dict[str, str] | None, status: int
) -> None:
    csms = Csms(site(port, 3, pki))
    ready(csms)

    async def scenario() -> None:
        async with asyncio.timeout(TIMEOUT_S), running(csms):
            url = f"wss://127.0.0.1:{port}/ocpp/{path}"
            assert await refused_status(url, client_context(pki, client), headers) == status

    asyncio.run(scenario())
    assert (csms.stats.connects, csms.stats.refused) == (0, 1)
    assert not any(s.booted for s in csms.stations.values())


@pytest.mark.parametrize("tls", ["TLSv1_2", "TLSv1_3"])
@pytest.mark.parametrize(
    ("port", "client"),
    [(19315, None), (19317, "AC1-foreign")],
    ids=["no-client-certificate", "certificate-of-another-ca"],
)
def test_profile_3_without_a_certificate_of_the_ca_the_tls_handshake_fails(
    pki: Pki, port: int, client: str | None, tls: str
) -> None:
    version = ssl.TLSVersion[tls]
    port += 1 if tls == "TLSv1_3" else 0  # one port per case
    csms = Csms(site(port, 3, pki))
    ready(csms)

    def station_context(name: str | None) -> ssl.SSLContext:
        context = client_context(pki, name)
        context.minimum_version = context.maximum_version = version
        return context

    async def scenario() -> None:
        async with asyncio.timeout(TIMEOUT_S), running(csms):
            url = f"wss://127.0.0.1:{port}/ocpp/AC1"
            err = await handshake_fails(url, station_context(client))
            chain = _chain(err)
            if version == ssl.TLSVersion.TLSv1_2:
                # The server aborts the handshake itself: no HTTP was ever sent.
                assert any(isinstance(e, ssl.SSLError | ConnectionError) for e in chain), chain
            else:
                # TLS 1.3: the client's side of the handshake completes before the server has checked the
                # certificate; the server then closes instead of answering the HTTP upgrade.
                assert any(isinstance(e, ssl.SSLError | ConnectionError | EOFError) for e in chain), chain
            # The right certificate on the same endpoint gets in: the failure is the certificate's.
            async with connect(url, ssl_context=station_context("AC1")) as ws:
                assert tls_version(ws) == tls.replace("_", ".")
                assert await boot(ws, "AC1") == "Accepted"

    asyncio.run(scenario())
    # Refused below HTTP: the CSMS never saw a request (nothing to count), only the good connection.
    assert (csms.stats.connects, csms.stats.refused) == (1, 0)


def test_tls_below_1_2_is_refused(pki: Pki) -> None:
    """A station that speaks only TLS 1.1 fails the handshake (OCPP 2.0.1: TLS 1.2 or higher)."""

    def old_tls(context: ssl.SSLContext) -> ssl.SSLContext:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        return context

    async def scenario() -> None:
        # Control: a server that allows TLS 1.1 lets this station through to HTTP (here: 401, no password),
        # so the refusal below is the CSMS's TLS settings, not the test's OpenSSL.
        lax = old_tls(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        lax.load_cert_chain(str(pki.server.cert), str(pki.server.key))
        control = Csms(site(19319, 2, pki))
        async with asyncio.timeout(TIMEOUT_S):
            await control.start(lax)
            try:
                status = await refused_status("wss://127.0.0.1:19319/ocpp/AC1", old_tls(client_context(pki)), None)
            except (OSError, EOFError, websockets.InvalidHandshake) as err:
                pytest.skip(f"this OpenSSL cannot speak TLS 1.1 at all: {err!r}")
            finally:
                await control.stop()
        assert status == 401
        csms = Csms(site(19320, 2, pki))
        async with asyncio.timeout(TIMEOUT_S), running(csms):
            await handshake_fails("wss://127.0.0.1:19320/ocpp/AC1", old_tls(client_context(pki)))
        assert csms.stats.connects == 0

    asyncio.run(scenario())


# -- configuration -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "cert", "ca", "paths"),
    [
        (2, False, True, ["ocpp.tls_cert"]),
        (3, True, False, ["ocpp.tls_ca"]),
        (3, False, False, ["ocpp.tls_cert", "ocpp.tls_ca"]),
    ],
    ids=["profile-2-no-cert", "profile-3-no-ca", "profile-3-nothing"],
)
def test_tls_settings_missing_for_the_profile_are_reported_by_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], profile: int, cert: bool, ca: bool, paths: list[str]
) -> None:
    fake = paths_only(tmp_path)
    text = site_text(19330, profile, fake, cert=cert, ca=ca)
    with pytest.raises(ConfigError) as raised:
        parse_config(text)
    assert [i.path for i in raised.value.issues] == paths
    file = tmp_path / "site.yaml"
    file.write_text(text, encoding="utf-8")
    assert main(["check-config", str(file)]) == 1
    err = capsys.readouterr().err
    for path in paths:
        assert f"{path}: " in err
    # With the settings the same site is valid.
    assert parse_config(site_text(19330, profile, fake)).config.ocpp is not None


def test_profile_2_with_a_cert_but_no_key_is_reported_and_profile_1_needs_no_tls(tmp_path: Path) -> None:
    fake = paths_only(tmp_path)
    ocpp = {"port": 19331, "security_profile": 2, "tls_cert": str(fake.server.cert)}
    with pytest.raises(ConfigError) as raised:
        parse_config(SITE.format(ocpp=json.dumps(ocpp)))
    assert [i.path for i in raised.value.issues] == ["ocpp.tls_cert"]
    assert "tls_key" in raised.value.issues[0].message
    assert parse_config(site_text(19331, 1, None)).config.ocpp is not None


def paths_only(directory: Path) -> Pki:
    """File names, no files: the config loader does not read them."""

    def pair(name: str) -> KeyPair:
        return KeyPair(directory / f"{name}.pem", directory / f"{name}.key")

    return Pki(ca=pair("ca"), server=pair("server"), clients={}, foreign_ca=pair("other"))


def test_profile_3_stations_need_no_password_and_unreadable_tls_files_are_config_errors(pki: Pki) -> None:
    text = site_text(19340, 3, pki).replace("options: {password: secret-ac1}", "options: {}")
    assert "options: {}" in text
    # No password needed under profile 3: the certificate names the station; under profile 2 it is.
    assert compile_stations(parse_config(text).config)[1] == []
    without = parse_config(site_text(19340, 2, pki).replace("options: {password: secret-ac1}", "options: {}"))
    assert [str(i) for i in compile_stations(without.config)[1]] == [
        "devices[0].options: give exactly one of password_sha256 (recommended) or password"
    ]
    broken = parse_config(site_text(19341, 3, pki).replace(str(pki.ca.cert), "/nonexistent/ca.pem")).config

    async def start() -> None:
        await Csms(broken).start()

    with pytest.raises(ConfigError, match=r"ocpp\.tls_ca: cannot load the stations' CA"):
        asyncio.run(start())
