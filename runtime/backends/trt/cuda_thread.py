"""The one thread that owns the CUDA context and the TensorRT engine: every CUDA call of the
backend runs on it (TensorRT issues #475 and #1107 show what happens when Flask or other threads
touch a context they do not own)."""

from __future__ import annotations

import atexit
import queue
import threading
import traceback
from concurrent.futures import Future
from typing import TYPE_CHECKING, Callable

from hipcad.runtime.errors import HipcadError

if TYPE_CHECKING:
    pass


class CudaThread:
    """One thread that owns the GPU's CUDA context and runs every job handed to it, in order.

    It retains the device's primary context - the one the CUDA runtime, hence TensorRT, uses - and
    pushes it, since retain_primary_context does not make it current (pycuda doc/driver.rst,
    ``Device.retain_primary_context``; the same pattern as pycuda/autoprimaryctx.py). On stop it runs
    ``on_stop`` (free everything), then ``Context.pop`` and ``Context.detach`` (release), on itself.
    """

    def __init__(self, device_index: int, on_stop: Callable[[], None]) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stopped = False
        self._on_stop = on_stop
        started: Future = Future()
        self._thread = threading.Thread(target=self._main, args=(device_index, started),
                                        name="hipcad-tensorrt", daemon=True)
        self._thread.start()
        started.result()  # re-raises a failure to set up the context
        atexit.register(self.stop)  # pop the context even if nobody calls deactivate()

    def run(self, fn: Callable, *args):
        """Run ``fn(*args)`` on the CUDA thread; return its result or raise its exception."""
        done: Future = Future()
        with self._lock:
            if self._stopped:
                raise HipcadError("the TensorRT backend has been deactivated")
            self._jobs.put((fn, args, done))
        return done.result()

    def stop(self) -> None:
        """Finish the queued jobs, free and pop on the CUDA thread, wait for it to end."""
        atexit.unregister(self.stop)
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._jobs.put(None)
        self._thread.join()

    def _main(self, device_index: int, started: Future) -> None:
        try:
            import pycuda.driver as cuda

            cuda.init()
            context = cuda.Device(device_index).retain_primary_context()
            context.push()
        except BaseException as err:
            with self._lock:
                self._stopped = True
            started.set_exception(err)
            return
        started.set_result(None)
        try:
            while (job := self._jobs.get()) is not None:
                fn, args, done = job
                try:
                    done.set_result(fn(*args))
                except BaseException as err:
                    # drop the failed job's locals (an engine, device buffers) here, while the context is
                    # current, rather than wherever the caller's traceback is finally collected
                    traceback.clear_frames(err.__traceback__)
                    done.set_exception(err)
        finally:
            try:
                self._on_stop()
            finally:
                cuda.Context.pop()
                context.detach()
