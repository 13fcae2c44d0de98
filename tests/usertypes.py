"""User-defined value types that must never reach the coordinator as themselves.

Subclasses of builtins and enums, as users write them; the lying dunder methods
make sure the host converts by the plain value, not by what a subclass claims.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal


class Color(enum.Enum):
    RED = 1


class Mode(enum.StrEnum):
    FAST = "fast"


class Level(enum.IntEnum):
    HIGH = 64


class MyStr(str):
    def __str__(self) -> str:  # a subclass may lie in __str__; the plain value is what counts
        return "lie"


class MyInt(int):
    def __index__(self) -> int:
        return 999


class MyFloat(float):
    def __float__(self) -> float:
        return 999.0


class MyDateTime(datetime):
    pass


class MyDecimal(Decimal):
    pass


class MyUUID(uuid.UUID):
    pass
