"""Local fallback schedule used when no valid cloud plan is available (see docs/fallback.md)."""

from fallback.inputs import (
    BatteryInput,
    FallbackInputs,
    SessionInput,
    import_limit_w,
    session_input,
    uncontrolled_surplus_w,
)
from fallback.schedule import FallbackSchedule

__all__ = [
    "BatteryInput",
    "FallbackInputs",
    "FallbackSchedule",
    "SessionInput",
    "import_limit_w",
    "session_input",
    "uncontrolled_surplus_w",
]
