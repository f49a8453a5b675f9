"""Local operator commands for a running controller: an append-only JSON-lines file in the state directory.

``plaza-ems reset-latch fire --operator NAME`` appends a request; the running controller reads new lines
each cycle, hands them to the interlock step (which accepts or refuses them and logs either way) and
never loses a line: a malformed one is logged and skipped, the rest are still read. This stays the local
fallback once OPC UA and MQTT carry the same commands.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

from controller.image import LatchReset

COMMANDS_FILE = "commands.jsonl"
LATCH_NAMES = ("fire", "emergency_stop")
log = logging.getLogger(__name__)


class InboxError(Exception):
    """A command that cannot be posted (bad operator name, unwritable state directory)."""


def post_reset(state_dir: Path, latch: str, operator: str, now: datetime | None = None) -> Path:
    """Append a latch-reset request; the running controller accepts or refuses it and logs either way."""
    operator = operator.strip()
    if not operator:
        raise InboxError("an operator name is required: resets are logged with who made them")
    if latch not in LATCH_NAMES:
        raise InboxError(f"unknown latch '{latch}' (known: {', '.join(LATCH_NAMES)})")
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InboxError(f"cannot use state directory {state_dir}: {err.strerror or err}") from err
    path = state_dir / COMMANDS_FILE
    stamp = (now or datetime.now(UTC)).isoformat()
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"cmd": "reset_latch", "latch": latch, "operator": operator, "at": stamp}) + "\n")
    return path


class CommandInbox:
    """Reads commands appended since the last look."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / COMMANDS_FILE
        state_dir.mkdir(parents=True, exist_ok=True)
        # Commands written before this controller started are history, not requests.
        self._offset = self.path.stat().st_size if self.path.exists() else 0

    def poll(self, now: float) -> list[LatchReset]:
        if not self.path.exists():
            return []
        if self.path.stat().st_size < self._offset:
            log.warning("%s was truncated or replaced; reading it from the start", self.path)
            self._offset = 0
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        complete = chunk.rfind(b"\n") + 1
        self._offset += complete
        resets: list[LatchReset] = []
        for number, raw in enumerate(chunk[:complete].splitlines(), start=1):
            try:
                item = json.loads(raw)
                if item.get("cmd") != "reset_latch" or item.get("latch") not in LATCH_NAMES:
                    raise ValueError("not a reset_latch command for a known latch")
                operator = str(item["operator"]).strip()
                if not operator:
                    raise ValueError("operator is empty")
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                log.error("%s: ignoring malformed command line %d: %s", self.path, number, err)
                continue
            log.info("operator %s requests reset of latch '%s'", operator, item["latch"])
            resets.append(LatchReset(item["latch"], operator, now))
        return resets
