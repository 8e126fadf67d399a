"""A recording fake of ``pycuda.driver`` backed by host memory (no GPU, no CUDA).

Signatures follow inducer/pycuda ``src/wrapper/wrap_cudadrv.cpp`` (Boost.Python: functions declared
without ``py::args`` names take positional arguments only, e.g. ``mem_alloc(bytes)``, ``Device(ordinal)``)
and ``pycuda/driver.py``; context semantics follow ``src/cpp/cuda.hpp``:

* a per-thread context stack (``context_stack``); ``Device.make_context`` pushes, ``retain_primary_context``
  does *not* make the context current (doc/driver.rst), ``Context.pop()`` is a staticmethod and raises
  LogicError "cannot pop non-current context" on an empty stack;
* allocations, page-locked host memory and streams need a current context ("explicit_context_dependent ...
  no currently active context?" / "invalid device context");
* ``DeviceAllocation.free()`` from a thread that does not own the context warns "device_allocation in
  out-of-thread context could not be cleaned up" and leaks, as pycuda's scoped_context_activation does;
  a second ``free()`` raises LogicError "invalid resource handle";
* a thread that ends with contexts still on its stack is what makes real pycuda abort ("PyCUDA ERROR: The
  context stack was not empty upon module cleanup"); the fake records it in :data:`ABORTS` instead.

Async copies are queued on their stream and run at ``Stream.synchronize()`` / ``Context.synchronize()``.
Every public call is appended to :data:`RECORD`. Knobs: :data:`FAKE`.
"""

from __future__ import annotations

import builtins
import os
import threading
import warnings

import numpy as np
from _fakerecord import Call, Record  # noqa: F401

from . import _fakegpu

RECORD = Record()
#: threads that ended (or a process that exited) with a non-empty context stack: real pycuda aborts there
ABORTS: list[str] = []


class _Settings:
    __slots__ = ("device_count", "device_name", "compute_capability", "total_memory", "init_error")

    def __init__(self):
        self.reset()

    def reset(self):
        self.device_count = int(os.environ.get("FAKE_CUDA_DEVICE_COUNT", "1"))
        self.device_name = os.environ.get("FAKE_CUDA_DEVICE_NAME", "NVIDIA A100-SXM4-80GB")
        self.compute_capability = tuple(int(x) for x in os.environ.get("FAKE_CUDA_CC", "8.0").split("."))
        self.total_memory = 80 << 30
        #: e.g. "no CUDA-capable device is detected" to make init() fail like a box without a driver
        self.init_error = None


FAKE = _Settings()
_state = {"initialized": False}


# -- errors (wrap_cudadrv.cpp DECLARE_EXC: Error; MemoryError, LogicError, LaunchError, RuntimeError derive from it)
class Error(Exception):
    pass


class MemoryError(Error):  # noqa: A001 - the real name
    pass


class LogicError(Error):
    pass


class LaunchError(Error):
    pass


class RuntimeError(Error):  # noqa: A001 - the real name
    pass


def _error(routine: str, what: str, msg: str | None = None, cls=LogicError):
    # cuda.hpp error::make_message: "<routine> failed: <curesult string>[ - <msg>]"
    return cls(f"{routine} failed: {what}" + (f" - {msg}" if msg else ""))


def _need_init(routine):
    if not _state["initialized"]:
        raise _error(routine, "initialization error")


# -- per-thread context stack -----------------------------------------------------------------
class _ThreadStack:
    def __init__(self):
        self.stack: list[Context] = []
        self.thread = threading.current_thread().name

    def __del__(self):  # thread_specific_ptr<context_stack> destructor: ~context_stack() aborts if not empty
        if any(c._valid for c in self.stack):
            ABORTS.append(f"thread {self.thread!r}: PyCUDA ERROR: The context stack was not empty upon module cleanup.")


_tls = threading.local()


def _stack() -> list:
    if not hasattr(_tls, "s"):
        _tls.s = _ThreadStack()
    return _tls.s.stack


def _current():
    s = _stack()
    while s and not s[-1]._valid:  # context::current_context: invalid contexts are popped lazily
        s.pop()
    return s[-1] if s else None


def _need_context(routine):
    ctx = _current()
    if ctx is None:
        raise _error(routine, "invalid device context")
    return ctx


# -- init / devices -------------------------------------------------------------------------------
def init(flags=0):
    RECORD.add("init", flags=flags)
    if FAKE.init_error:
        raise _error("cuInit", FAKE.init_error, cls=RuntimeError)
    _state["initialized"] = True


def get_version():
    return (12, 4, 0)


def get_driver_version():
    return 12040


class device_attribute:  # noqa: N801 - the real name (a subset of CUdevice_attribute)
    MAX_THREADS_PER_BLOCK = 1
    MULTIPROCESSOR_COUNT = 16
    INTEGRATED = 18
    CAN_MAP_HOST_MEMORY = 19
    COMPUTE_MODE = 20
    CONCURRENT_KERNELS = 31
    PCI_BUS_ID = 33
    PCI_DEVICE_ID = 34
    ASYNC_ENGINE_COUNT = 40
    UNIFIED_ADDRESSING = 41
    COMPUTE_CAPABILITY_MAJOR = 75
    COMPUTE_CAPABILITY_MINOR = 76


class Device:
    """``Device(ordinal)`` (make_device(int ordinal); positional only)."""

    __slots__ = ("_ordinal",)

    def __init__(self, ordinal, /):
        RECORD.add("Device", ordinal=ordinal)
        _need_init("cuDeviceGet")
        if isinstance(ordinal, builtins.bool) or not isinstance(ordinal, int):
            raise TypeError(f"Python argument types in Device.__init__(Device, {type(ordinal).__name__}) did not match "
                            "C++ signature")
        if not 0 <= ordinal < FAKE.device_count:
            raise _error("cuDeviceGet", "invalid device ordinal")
        self._ordinal = ordinal

    @staticmethod
    def count():
        RECORD.add("Device.count")
        _need_init("cuDeviceGetCount")
        return FAKE.device_count

    def name(self):
        return FAKE.device_name

    def compute_capability(self):
        return FAKE.compute_capability

    def total_memory(self):
        return FAKE.total_memory

    def pci_bus_id(self):
        return f"0000:{self._ordinal + 1:02x}:00.0"

    def get_attribute(self, attr):
        values = {device_attribute.COMPUTE_CAPABILITY_MAJOR: FAKE.compute_capability[0],
                  device_attribute.COMPUTE_CAPABILITY_MINOR: FAKE.compute_capability[1],
                  device_attribute.MULTIPROCESSOR_COUNT: 108, device_attribute.INTEGRATED: 0,
                  device_attribute.MAX_THREADS_PER_BLOCK: 1024, device_attribute.ASYNC_ENGINE_COUNT: 2,
                  device_attribute.CONCURRENT_KERNELS: 1, device_attribute.UNIFIED_ADDRESSING: 1,
                  device_attribute.CAN_MAP_HOST_MEMORY: 1, device_attribute.COMPUTE_MODE: 0,
                  device_attribute.PCI_BUS_ID: self._ordinal + 1, device_attribute.PCI_DEVICE_ID: 0}
        if attr not in values:
            raise _error("cuDeviceGetAttribute", "invalid argument")
        return values[attr]

    def __getattr__(self, name):
        # pycuda/driver.py device___getattr__: dev.get_attribute(getattr(device_attribute, name.upper()))
        if name.startswith("_"):
            raise AttributeError(name)
        return self.get_attribute(getattr(device_attribute, name.upper()))

    def make_context(self, flags=0):
        RECORD.add("Device.make_context", ordinal=self._ordinal, flags=flags)
        ctx = Context._new(self, primary=False)
        ctx.push_internal()
        return ctx

    def retain_primary_context(self):
        RECORD.add("Device.retain_primary_context", ordinal=self._ordinal)
        return Context._new(self, primary=True)

    def __eq__(self, other):
        return isinstance(other, Device) and other._ordinal == self._ordinal

    def __hash__(self):
        return hash(("Device", self._ordinal))


# -- contexts -------------------------------------------------------------------------------------
class Context:
    """No public constructor (py::no_init). push(); pop()/get_device()/synchronize()/get_current() are static."""

    __slots__ = ("_device", "_primary", "_valid", "_thread", "_handle", "__weakref__")
    _handles = {}

    def __init__(self, *args, **kwargs):
        raise TypeError("This class cannot be instantiated from Python")

    @classmethod
    def _new(cls, device, primary):
        ctx = object.__new__(cls)
        ctx._device, ctx._primary, ctx._valid = device, primary, True
        ctx._thread = threading.get_ident()
        # the primary context of a device is one CUcontext, whichever Context object wraps it
        ctx._handle = 0x6000_0000 + device._ordinal if primary else 0x7000_0000 + id(ctx) % 0xFFFFFF
        return ctx

    handle = property(lambda self: self._handle)

    def __eq__(self, other):
        return isinstance(other, Context) and other._handle == self._handle

    def __hash__(self):
        return hash(self._handle)

    def push_internal(self):
        if not self._valid:
            raise _error("cuCtxPushCurrent", "invalid device context")
        _stack().append(self)

    def push(self):
        RECORD.add("Context.push", handle=self._handle, primary=self._primary)
        self.push_internal()

    @staticmethod
    def pop():
        RECORD.add("Context.pop")
        s = _stack()
        if not s:
            raise _error("context::pop", "invalid device context", "cannot pop non-current context")
        s.pop()

    def detach(self):
        RECORD.add("Context.detach", handle=self._handle, primary=self._primary)
        if not self._valid:
            raise _error("context::detach", "invalid device context", "cannot detach from invalid context")
        s = _stack()
        if s and s[-1] is self and not self._primary:
            s.pop()  # cuCtxDetach of the current context pops it ("pop is implicit in detach")
        self._valid = False

    @staticmethod
    def get_current():
        return _current()

    @staticmethod
    def get_device():
        ctx = _need_context("cuCtxGetDevice")
        return ctx._device

    @staticmethod
    def synchronize():
        RECORD.add("Context.synchronize")
        ctx = _need_context("cuCtxSynchronize")
        for stream in _fakegpu.live_streams():
            if stream._context == ctx:
                stream._drain()


# -- streams ----------------------------------------------------------------------------------
class Stream:
    """``Stream(flags=0)``; ``handle`` property; ``synchronize()``; ``is_done()``."""

    __slots__ = ("_context", "_handle", "_pending", "_thread", "__weakref__")

    def __init__(self, flags=0):
        RECORD.add("Stream", flags=flags)
        self._context = _need_context("cuStreamCreate")
        self._handle = _fakegpu.new_stream_handle()
        self._pending = []
        self._thread = threading.get_ident()
        _fakegpu.register_stream(self)

    handle = property(lambda self: self._handle)

    def synchronize(self):
        RECORD.add("Stream.synchronize", handle=self._handle)
        _need_context("cuStreamSynchronize")
        self._drain()

    def is_done(self):
        return not self._pending

    def _drain(self):
        while self._pending:
            label, fn = self._pending.pop(0)
            try:
                fn()
            except Exception as err:  # noqa: BLE001 - surfaces like a sticky CUDA error
                _fakegpu.FAILURES.append(f"{label}: {err}")
                raise _error("cuStreamSynchronize", "an illegal memory access was encountered", f"{label}: {err}",
                             cls=LaunchError) from err

    def __del__(self):
        try:
            _fakegpu.unregister_stream(self)
            if self._pending:
                warnings.warn("fake pycuda: a Stream with queued work was destroyed without synchronize()")
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


# -- memory ---------------------------------------------------------------------------------------
def _free_check(obj, kind: str) -> bool:
    """cuda.hpp scoped_context_activation + CUDAPP_CATCH_CLEANUP_ON_DEAD_CONTEXT. True: memory may be freed."""
    ctx = obj._context
    if not ctx._valid:
        return True  # dead context: cleaned up implicitly, silently
    if _current() != ctx and threading.get_ident() != ctx._thread:
        warnings.warn(f"{kind} in out-of-thread context could not be cleaned up", UserWarning, stacklevel=3)
        obj._leaked = True
        _fakegpu.LEAKED.append(f"{kind} of {getattr(obj, '_size', len(obj) if isinstance(obj, bytearray) else '?')} bytes")
        return False
    return True


class DeviceAllocation:
    """``int(alloc)`` is the device pointer; ``free()``; ``as_buffer(size, offset=0)``."""

    __slots__ = ("_addr", "_size", "_buf", "_valid", "_context", "_leaked", "__weakref__")

    def __init__(self, *args, **kwargs):
        raise TypeError("This class cannot be instantiated from Python")

    def __int__(self):
        return self._addr

    __index__ = __int__

    def free(self):
        RECORD.add("DeviceAllocation.free", address=self._addr)
        if not self._valid:
            raise _error("device_allocation::free", "invalid resource handle")
        if _free_check(self, "device_allocation"):
            _fakegpu.unregister_allocation(self)
        self._valid = False

    def as_buffer(self, size, offset=0):
        return memoryview(self._buf)[offset:offset + size]

    def __del__(self):
        try:
            if self._valid:
                self.free()
        except Exception:  # noqa: BLE001
            pass


def mem_alloc(bytes, /):  # noqa: A002 - mem_alloc_wrap(size_t bytes), positional only
    RECORD.add("mem_alloc", bytes=bytes)
    if isinstance(bytes, builtins.bool) or not isinstance(bytes, int):
        raise TypeError(f"Python argument types in pycuda._driver.mem_alloc({type(bytes).__name__}) did not match "
                        "C++ signature: mem_alloc(unsigned long)")
    ctx = _need_context("cuMemAlloc")
    a = object.__new__(DeviceAllocation)
    a._size, a._buf, a._valid, a._context, a._leaked = bytes, bytearray(bytes), True, ctx, False
    a._addr = _fakegpu.new_address(bytes)
    _fakegpu.register_allocation(a)
    return a


def mem_get_info():
    _need_context("cuMemGetInfo")
    used = sum(a._size for a in _fakegpu.live_allocations())
    return (FAKE.total_memory - used, FAKE.total_memory)


class PagelockedHostAllocation(bytearray):
    """The ``.base`` of an array from :func:`pagelocked_empty`; ``free()``. A bytearray subclass so that numpy
    can use it as the array's buffer in pure Python (the real class is a C++ allocation)."""

    def free(self):
        RECORD.add("PagelockedHostAllocation.free", nbytes=len(self))
        if not self._fake_valid:
            raise _error("pagelocked_host_allocation::free", "invalid resource handle")
        _free_check(self, "pagelocked_host_allocation")
        self._fake_valid = False

    def get_flags(self):
        return self._fake_flags

    def get_device_pointer(self):
        raise _error("cuMemHostGetDevicePointer", "invalid value")


HostAllocation = PagelockedHostAllocation


def pagelocked_empty(shape, dtype, order="C", mem_flags=0):
    RECORD.add("pagelocked_empty", shape=shape, dtype=dtype, order=order, mem_flags=mem_flags)
    ctx = _need_context("cuMemHostAlloc")
    dtype = np.dtype(dtype)
    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if order not in ("C", "F"):
        raise _error("numpy_empty", "invalid argument", "unrecognized order specifier")
    alloc = PagelockedHostAllocation(int(np.prod(dims, dtype=np.int64)) * dtype.itemsize)
    alloc._fake_valid, alloc._fake_flags, alloc._context, alloc._leaked = True, mem_flags, ctx, False
    return np.ndarray(dims, dtype=dtype, buffer=alloc, order=order)


def pagelocked_zeros(shape, dtype, order="C", mem_flags=0):
    result = pagelocked_empty(shape, dtype, order, mem_flags)
    result.fill(0)
    return result


def _pagelocked(array) -> bool:
    base = array
    while base is not None:
        if isinstance(base, PagelockedHostAllocation):
            return base._fake_valid
        base = getattr(base, "base", None)
        if isinstance(base, memoryview):
            base = base.obj
    return False


def _host_view(obj, writable: bool, routine: str) -> memoryview:
    try:
        view = memoryview(obj)
    except TypeError:
        raise TypeError(f"{routine}: expected an object with a buffer interface, got {type(obj).__name__}") from None
    if not view.contiguous:
        raise BufferError("ndarray is not contiguous")
    if writable and view.readonly:
        raise BufferError("Object is not writable.")
    return view.cast("B")


def _device_ptr(dest, routine: str) -> int:
    if isinstance(dest, DeviceAllocation):
        if not dest._valid:
            raise _error(routine, "invalid argument")
        return dest._addr
    if isinstance(dest, builtins.bool) or not isinstance(dest, int):
        raise TypeError(f"Python argument types in pycuda._driver.{routine}({type(dest).__name__}, ...) did not match "
                        "C++ signature (CUdeviceptr expected)")
    return dest


def _stream_arg(stream, routine: str):
    if stream is None:
        return None
    if not isinstance(stream, Stream):
        raise TypeError(f"{routine}: stream must be a pycuda.driver.Stream or None")
    if _current() != stream._context:
        raise _error(routine, "invalid resource handle")
    return stream


def _copy(dst_view: memoryview, src_view: memoryview, routine: str):
    if len(src_view) != len(dst_view):
        raise _error(routine, "invalid argument", f"size mismatch ({len(src_view)} vs {len(dst_view)} bytes)")
    dst_view[:] = src_view


def memcpy_htod(dest, src):
    RECORD.add("memcpy_htod", dest=dest, nbytes=memoryview(src).nbytes, pagelocked=_pagelocked(src))
    _need_context("cuMemcpyHtoD")
    view = _host_view(src, False, "memcpy_htod")
    dev = _fakegpu.device_view(_device_ptr(dest, "cuMemcpyHtoD"), len(view))
    if dev is None:
        raise _error("cuMemcpyHtoD", "invalid argument")
    _copy(dev, view, "cuMemcpyHtoD")


def memcpy_dtoh(dest, src):
    RECORD.add("memcpy_dtoh", src=src, nbytes=memoryview(dest).nbytes, pagelocked=_pagelocked(dest))
    _need_context("cuMemcpyDtoH")
    view = _host_view(dest, True, "memcpy_dtoh")
    dev = _fakegpu.device_view(_device_ptr(src, "cuMemcpyDtoH"), len(view))
    if dev is None:
        raise _error("cuMemcpyDtoH", "invalid argument")
    _copy(view, dev, "cuMemcpyDtoH")


def memcpy_htod_async(dest, src, stream=None):
    RECORD.add("memcpy_htod_async", dest=dest, nbytes=memoryview(src).nbytes, pagelocked=_pagelocked(src),
               stream=None if stream is None else stream.handle)
    _need_context("cuMemcpyHtoDAsync")
    view = _host_view(src, False, "memcpy_htod_async")
    stream = _stream_arg(stream, "cuMemcpyHtoDAsync")
    ptr = _device_ptr(dest, "cuMemcpyHtoDAsync")
    if _fakegpu.device_view(ptr, len(view)) is None:
        raise _error("cuMemcpyHtoDAsync", "invalid argument")

    def run():  # reads the host buffer when the copy executes, as the DMA engine does
        _copy(_fakegpu.device_view(ptr, len(view)), view, "cuMemcpyHtoDAsync")

    if stream is None:
        run()
    else:
        stream._pending.append(("memcpy_htod_async", run))


def memcpy_dtoh_async(dest, src, stream=None):
    RECORD.add("memcpy_dtoh_async", src=src, nbytes=memoryview(dest).nbytes, pagelocked=_pagelocked(dest),
               stream=None if stream is None else stream.handle)
    _need_context("cuMemcpyDtoHAsync")
    view = _host_view(dest, True, "memcpy_dtoh_async")
    stream = _stream_arg(stream, "cuMemcpyDtoHAsync")
    ptr = _device_ptr(src, "cuMemcpyDtoHAsync")
    if _fakegpu.device_view(ptr, len(view)) is None:
        raise _error("cuMemcpyDtoHAsync", "invalid argument")

    def run():
        _copy(view, _fakegpu.device_view(ptr, len(view)), "cuMemcpyDtoHAsync")

    if stream is None:
        run()
    else:
        stream._pending.append(("memcpy_dtoh_async", run))


def memcpy_dtod(dest, src, size):
    _need_context("cuMemcpyDtoD")
    d = _fakegpu.device_view(_device_ptr(dest, "cuMemcpyDtoD"), size)
    s = _fakegpu.device_view(_device_ptr(src, "cuMemcpyDtoD"), size)
    if d is None or s is None:
        raise _error("cuMemcpyDtoD", "invalid argument")
    d[:] = s


# -- fake-only helpers for tests --------------------------------------------------------------------
def _fake_reset() -> None:
    """Forget every allocation, stream and record (between tests)."""
    for a in _fakegpu.live_allocations():
        _fakegpu.unregister_allocation(a)
    for s in _fakegpu.live_streams():
        _fakegpu.unregister_stream(s)
    RECORD.clear()
    ABORTS.clear()
    _fakegpu.FAILURES.clear()
    _fakegpu.LEAKED.clear()


def _fake_leaks() -> dict:
    """What is still alive: device allocations and streams (after a clean teardown both are empty)."""
    return {"allocations": [(hex(a._addr), a._size) for a in _fakegpu.live_allocations()],
            "streams": [hex(s._handle) for s in _fakegpu.live_streams()], "leaked": list(_fakegpu.LEAKED)}


def _fake_thread_stack() -> list:
    """The calling thread's context stack (handles), for assertions."""
    return [c._handle for c in _stack()]
