"""A real mosquitto broker for the demo and the cloud-link tests: TLS on 127.0.0.1, passwords, ACL, persistence.

``Broker.start(directory)`` makes a throwaway CA and server certificate (``hil.pki``), a password
file (``mosquitto_passwd -b``) with the test users (``USERS``: ``site`` / ``secret``, ``cloud`` / ``cloudpw``,
the optimiser's ``optimizer`` / ``optpw``, or the ones given), the ACL (``ACL``, or the one given)
and a mosquitto.conf with one TLS listener on a free port of 127.0.0.1, ``allow_anonymous false`` and
persistence in the directory; it starts ``mosquitto -c`` and waits until the port accepts. ``stop``,
``kill`` and ``restart`` act on that PID only. ``MOSQUITTO`` is None when the broker is not installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from hil.pki import Pki, make_pki

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
SKIP_REASON = "mosquitto is not installed (scripts/setup.sh installs it when run as root)"
USERS = {"site": "secret", "cloud": "cloudpw", "intruder": "letmein", "optimizer": "optpw"}
DEPLOYMENT_ACL = """\
# The site publishes what it reports and reads its plans and commands; only the cloud may send those.
user site
topic read plaza/v1/+/+/plan
topic read plaza/v1/+/+/cmd/#
topic write plaza/v1/+/+/state
topic write plaza/v1/+/+/telemetry
topic write plaza/v1/+/+/sessions
topic write plaza/v1/+/+/alarms
topic write plaza/v1/+/+/ack
topic write plaza/v1/+/+/snapshot

# The optimiser reads snapshots (as a shared subscription) and every plan (to know which snapshot each
# answers); it publishes plans and its answers to snapshots, and nothing else.
user optimizer
topic read plaza/v1/+/+/snapshot
topic readwrite plaza/v1/+/+/plan
topic write plaza/v1/+/+/snapshot/ack
"""
"""The rules of docs/mqtt.md and docs/optimizer.md for the site and the optimiser users."""
ACL = (
    DEPLOYMENT_ACL
    + """
user cloud
topic readwrite plaza/v1/#

# A client with a valid login but no business sending plans: it may only watch.
user intruder
topic read plaza/v1/#
"""
)
"""The tests' ACL: the deployment's, a cloud user that may send plans and commands, and a watcher."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Broker:
    directory: Path
    pki: Pki
    port: int
    conf: Path
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.directory / "mosquitto.log"

    @classmethod
    def start(cls, directory: Path, users: dict[str, str] | None = None, acl: str = ACL, pki_days: int = 2) -> Broker:
        """Make the PKI, password file, ACL and config in ``directory`` and start mosquitto on a free port."""
        assert MOSQUITTO is not None, SKIP_REASON
        assert MOSQUITTO_PASSWD is not None, SKIP_REASON
        directory.mkdir(parents=True, exist_ok=True)
        pki = make_pki(directory / "pki", pki_days)
        passwd = directory / "passwd"
        for user, password in (USERS if users is None else users).items():
            create = ["-c"] if not passwd.exists() else []
            subprocess.run(
                [MOSQUITTO_PASSWD, *create, "-b", str(passwd), user, password], check=True, capture_output=True
            )
        acl_file = directory / "acl"
        acl_file.write_text(acl, encoding="ascii")
        persistence = directory / "persistence"
        persistence.mkdir(exist_ok=True)
        port = free_port()
        lines = [
            f"listener {port} 127.0.0.1",
            f"cafile {pki.ca.cert}",
            f"certfile {pki.server.cert}",
            f"keyfile {pki.server.key}",
            "tls_version tlsv1.2",
            "allow_anonymous false",
            f"password_file {passwd}",
            f"acl_file {acl_file}",
            "persistence true",
            f"persistence_location {persistence}/",
            "autosave_interval 1",
            f"log_dest file {directory / 'mosquitto.log'}",
            "log_type all",
        ]
        if os.geteuid() == 0:
            # mosquitto drops root privileges to the user "mosquitto" unless told to stay: it would then
            # not read the files written here.
            lines.append("user root")
        conf = directory / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="ascii")
        broker = cls(directory, pki, port, conf)
        broker.launch()
        return broker

    def launch(self) -> None:
        assert MOSQUITTO is not None
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited: {self.process.stderr.read().decode() if self.process.stderr else ''}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not open its port within 10 s")

    def stop(self) -> None:
        """SIGTERM and wait: mosquitto saves its persistence file on the way out."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.launch()

    def _end(self, sig: signal.Signals) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, sig)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        if self.process.stderr is not None:
            self.process.stderr.close()
