"""Base class of the fake's enums: behaves like a pybind11 ``py::enum_`` where the code relies on it.

Verified pybind11 behaviour kept here: members are class attributes with ``.name`` / ``.value``,
``int(member)`` works, ``str(member)`` is ``"DataType.FLOAT"``, members are hashable and compare
equal only to themselves. Unknown members raise AttributeError (no catch-all).
"""

from __future__ import annotations

import enum


class TrtEnum(enum.Enum):
    def __int__(self) -> int:
        return self.value

    def __index__(self) -> int:
        return self.value

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self.name}: {self.value}>"

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.value))

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.value == self.value
