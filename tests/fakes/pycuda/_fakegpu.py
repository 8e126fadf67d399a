"""Fake device memory and streams, shared by the fake ``pycuda.driver`` and the fake ``tensorrt``.

Device memory is host memory (a bytearray per allocation) at fake addresses; a stream is a queue of
operations that runs when the stream (or its context) is synchronised, so code that reads an
async-copied host buffer before ``Stream.synchronize()`` sees stale data, as on a GPU.
"""

from __future__ import annotations

import threading
import weakref

_lock = threading.RLock()
# weak: an allocation or stream nobody references is destroyed (pycuda's destructors free them)
_allocations = weakref.WeakValueDictionary()   # base address -> DeviceAllocation
_streams = weakref.WeakValueDictionary()       # handle -> Stream
_next = [0x7F00_0000_0000]
_next_stream = [0x5500_0000_1000]
#: operations that raised while a stream was drained (they surface as errors on synchronize)
FAILURES: list[str] = []
#: memory that pycuda could not free (freed from a thread that does not own its context)
LEAKED: list[str] = []


def new_address(nbytes: int) -> int:
    with _lock:
        addr = _next[0]
        _next[0] += (max(nbytes, 1) + 511) // 512 * 512 + 512  # 512-byte aligned, with a gap between allocations
        return addr


def new_stream_handle() -> int:
    with _lock:
        _next_stream[0] += 0x100
        return _next_stream[0]


def register_allocation(alloc) -> None:
    with _lock:
        _allocations[alloc._addr] = alloc


def unregister_allocation(alloc) -> None:
    with _lock:
        _allocations.pop(alloc._addr, None)


def register_stream(stream) -> None:
    with _lock:
        _streams[stream._handle] = stream


def unregister_stream(stream) -> None:
    with _lock:
        _streams.pop(stream._handle, None)


def device_view(address: int, nbytes: int):
    """A writable memoryview of [address, address + nbytes) inside one live allocation, else None."""
    with _lock:
        for base, alloc in list(_allocations.items()):
            if base <= address and address + nbytes <= base + alloc._size:
                return memoryview(alloc._buf)[address - base:address - base + nbytes]
    return None


def enqueue(stream_handle: int, fn, label: str) -> bool:
    """Run ``fn`` in stream order: now for the default stream (0), else when the stream is synchronised.

    Returns False for an unknown handle or a stream whose context is not current on this thread
    (CUDA's "invalid resource handle" / "invalid device context").
    """
    from . import driver

    if stream_handle == 0:
        if driver.Context.get_current() is None:
            return False
        fn()
        return True
    with _lock:
        stream = _streams.get(stream_handle)
    if stream is None or driver.Context.get_current() != stream._context:
        return False
    stream._pending.append((label, fn))
    return True


def live_allocations() -> list:
    with _lock:
        return list(_allocations.values())


def live_streams() -> list:
    with _lock:
        return list(_streams.values())
