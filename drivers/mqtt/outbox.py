"""SQLite outbox for everything the site must not lose on its way to the cloud: sessions, alarms, acks, telemetry.

Every such message is appended here first (one file, WAL, ``synchronous=FULL``: a committed row
survives a killed process and a power cut) and deleted only when the broker has PUBACKed it, so a crash
at any moment loses nothing; it may send a row twice, which the cloud drops by the row's ``event_id``
(at-least-once on the wire, exactly-once for the consumer). Rows are replayed in append order.

The outbox is bounded by rows and bytes. When an append goes over, room is made down to 90 % of the
bound, in this order: telemetry is thinned (every other telemetry row is dropped, oldest first, so old
telemetry gets coarser while recent stays fine), then the oldest acks, then the oldest alarms, and only
then the oldest session events. Every drop is counted by kind.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Kind = Literal["session", "alarm", "ack", "telemetry"]
SACRIFICE_ORDER: tuple[Kind, ...] = ("telemetry", "ack", "alarm", "session")
LOW_WATER = 0.9
"""Room is made down to this share of the bound, so a full outbox does not thin on every append."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    qos INTEGER NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    created_ts REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_kind ON outbox (kind, seq);
"""


@dataclass(frozen=True, slots=True)
class Row:
    seq: int
    kind: Kind
    topic: str
    qos: int
    event_id: str
    created_ts: float
    payload: bytes


@dataclass(slots=True)
class OutboxStats:
    appended: int = 0
    duplicates: int = 0
    """Appends whose event_id was already in the outbox (ignored)."""
    delivered: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


class Outbox:
    """Append, read in order, delete on delivery; bounded as the module docstring says."""

    def __init__(self, path: str | Path, *, max_rows: int = 200_000, max_bytes: int = 128 * 2**20) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.stats = OutboxStats()
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._rows = 0
        self._bytes = 0
        self._recount()

    def _recount(self) -> None:
        self._rows, self._bytes = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
        ).fetchone()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        # Autocommit connection (isolation_level=None): the transaction is explicit, so an append and
        # the room it makes, or a batch of deletes, commit together or not at all.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            self._recount()
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        return int(self._rows)

    @property
    def size_bytes(self) -> int:
        return int(self._bytes)

    def append(
        self, kind: Kind, topic: str, payload: bytes, *, event_id: str, created_ts: float, qos: int = 1
    ) -> int | None:
        """Store one message (committed when this returns); its seq, or None if ``event_id`` is already here."""
        with self._transaction():
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO outbox (kind, topic, qos, event_id, created_ts, payload)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (kind, topic, qos, event_id, created_ts, payload),
            )
            if cursor.rowcount == 0:
                self.stats.duplicates += 1
                return None
            self._rows += 1
            self._bytes += len(payload)
            if self._rows > self.max_rows or self._bytes > self.max_bytes:
                self._make_room()
        self.stats.appended += 1
        return cursor.lastrowid

    def pending(self, after_seq: int = 0, limit: int = 100) -> list[Row]:
        """Up to ``limit`` rows after ``after_seq``, oldest first."""
        rows = self._db.execute(
            "SELECT seq, kind, topic, qos, event_id, created_ts, payload FROM outbox"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return [Row(*row) for row in rows]

    def delete(self, seqs: Iterable[int]) -> None:
        """Forget delivered rows (one transaction for all of them)."""
        wanted = list(seqs)
        if not wanted:
            return
        with self._transaction():
            removed = self._delete_where(f"seq IN ({','.join('?' * len(wanted))})", wanted)
        self.stats.delivered += removed

    def counts(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind").fetchall())

    def _delete_where(self, where: str, args: Sequence[object]) -> int:
        count, size = self._db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox WHERE {where}", args
        ).fetchone()
        self._db.execute(f"DELETE FROM outbox WHERE {where}", args)
        self._rows -= count
        self._bytes -= size
        return int(count)

    def _over(self) -> bool:
        return self._rows > LOW_WATER * self.max_rows or self._bytes > LOW_WATER * self.max_bytes

    def _make_room(self) -> None:
        for kind in SACRIFICE_ORDER:
            while self._over():
                if kind == "telemetry":
                    removed = self._thin_telemetry()
                else:
                    removed = self._delete_where(
                        "seq IN (SELECT seq FROM outbox WHERE kind = ? ORDER BY seq LIMIT ?)", (kind, self._excess())
                    )
                if not removed:
                    break
                self.stats.dropped[kind] = self.stats.dropped.get(kind, 0) + removed
            if not self._over():
                return

    def _excess(self) -> int:
        """Rows to drop to get under the low-water mark, at least one; by bytes, estimated from the mean row."""
        by_rows = self._rows - int(LOW_WATER * self.max_rows)
        mean = self._bytes / self._rows if self._rows else 1
        by_bytes = int((self._bytes - LOW_WATER * self.max_bytes) / mean) + 1
        return max(1, by_rows, by_bytes)

    def _thin_telemetry(self) -> int:
        """Drop every other telemetry row, oldest first, as many as are needed (one pass at most)."""
        seqs = [seq for (seq,) in self._db.execute("SELECT seq FROM outbox WHERE kind = 'telemetry' ORDER BY seq")]
        # One row left cannot be halved: it goes like a row of any other kind.
        victims = seqs if len(seqs) <= 1 else seqs[1::2][: self._excess()]
        if not victims:
            return 0
        return self._delete_where(f"seq IN ({','.join('?' * len(victims))})", victims)
