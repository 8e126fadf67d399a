"""The call record of the fake ``tensorrt`` and ``pycuda`` (one ``Record`` each: ``tensorrt.RECORD``,
``pycuda.driver.RECORD``). A module of its own so that both fakes share one implementation.

Each public call appends a :class:`Call`; tests assert on it::

    tensorrt.RECORD.clear()
    ... code under test ...
    assert tensorrt.RECORD.names()[:3] == ["Logger", "Builder", "Builder.create_network"]
    call = tensorrt.RECORD.last("IBuilderConfig.set_flag")
    assert call.args["flag"] is tensorrt.BuilderFlag.FP16
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Call:
    name: str                      # "Class.method" as in the real binding, or "Class" for a constructor
    args: dict[str, Any]           # bound by the real parameter names
    thread: str = field(default_factory=lambda: threading.current_thread().name)
    t_ns: int = field(default_factory=time.perf_counter_ns)  # comparable across the fake tensorrt and pycuda records
    result: Any = None


class Record(list):
    """A list of :class:`Call` with a few helpers; thread-safe appends."""

    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()

    def add(self, call_name: str, /, **args) -> Call:
        call = Call(call_name, args)
        with self._lock:
            self.append(call)
        return call

    def names(self) -> list[str]:
        return [c.name for c in self]

    def calls(self, name: str) -> list[Call]:
        return [c for c in self if c.name == name]

    def last(self, name: str) -> Call:
        found = self.calls(name)
        if not found:
            raise AssertionError(f"{name} was never called; calls: {self.names()}")
        return found[-1]

    def threads(self) -> set[str]:
        return {c.thread for c in self}
