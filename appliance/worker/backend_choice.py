"""Which backend the inference thread reads with, and when that changes.

- At start: the configured backend. With ``backend = "triton"``, a server that cannot be reached, is
  not ready, serves another model or fails the self-test hands over to the box's own
  ``local_backend`` at once (the box keeps reading).
- At run time: a backend that fails (not the file's fault) hands over to the next one - TensorRT to
  ONNX Runtime, the server to the local backend - and the item is read again.
- While reading locally instead of on the server, the server is tried again every
  ``triton_retry_s`` (between two radiographs, on the inference thread, with the full activation:
  identity check and self-test); when it answers, the box goes back to it.

Every change is logged, counted, kept as an event, and published in the store's ``backend`` state
that ``/api/health``, the kiosk and ``/metrics`` read.
"""

from __future__ import annotations

import logging
import time

from hipcad.appliance.config import Config
from hipcad.appliance.storage.store import Store
from hipcad.runtime.backends import AUTO_ORDER
from hipcad.runtime.backends.triton import address, model_name_for
from hipcad.runtime.errors import HipcadError

log = logging.getLogger("hipcad.worker")


class BackendChoice:
    def __init__(self, config: Config, bundle, opener) -> None:
        self.config, self.bundle, self.opener = config, bundle, opener
        #: reading through a Triton server is wanted (it may be down)
        self.remote = config.backend == "triton"
        self.info: dict = {}
        tls = config.triton_tls or bool(config.triton_ca or config.triton_cert)
        self._server: dict = {"url": address(config.triton_url, config.triton_protocol, tls), "model": config.triton_model
                              or model_name_for(bundle), "in_use": False, "since": None, "error": None, "next_try_at": None}
        self._next_try = float("inf")

    def _open(self, name: str):
        return self.opener(name, self.bundle, **self.config.backend_options(name))

    # -- the three moments ------------------------------------------------------------------
    def first(self, store: Store):
        """The backend to start with; HipcadError when nothing can read here."""
        if not self.remote:
            backend = self._open(self.config.backend)
            self._publish(backend, store)
            return backend
        try:
            backend = self._open("triton")
        except HipcadError as err:
            why = f"inference server {self._server['url']} not used: {err}"
            log.error("%s", why)
            return self._go_local(why, store)
        self._server_in_use(backend, store)
        return backend

    def failed(self, backend, failure: str, store: Store):
        """``backend`` failed at run time: the next backend takes over (HipcadError when none can)."""
        current = backend.name
        log.error("backend %s failed at run time: %s", current, failure)
        backend.deactivate()
        if current == "triton":
            return self._go_local(f"inference server {self._server['url']} failed at run time ({failure})", store)
        order = list(AUTO_ORDER)
        for name in order[order.index(current) + 1:] if current in order else []:
            try:
                new = self._open(name)
            except HipcadError as err:
                log.error("fallback backend %s could not be loaded: %s", name, err)
                continue
            self._fell_back(f"{current} failed at run time ({failure}); now using {new.name} on {new.device}", store)
            self._publish(new, store, runtime_fallback=self.info["runtime_fallback"])
            return new
        raise HipcadError(f"backend {current} failed at run time and no other backend could take over: {failure}")

    def maybe_return(self, backend, store: Store):
        """Back to the server when it is time to try and it answers; else ``backend``."""
        if not self.remote or backend.name == "triton" or time.monotonic() < self._next_try:
            return backend
        try:
            server = self._open("triton")
        except HipcadError as err:
            if str(err) != self._server["error"]:
                log.warning("inference server still not usable: %s", err)
            self._retry_later(str(err))
            self._publish(backend, store, runtime_fallback=self.info.get("runtime_fallback"))
            return backend
        backend.deactivate()
        message = f"inference server {self._server['url']} answers again: reading on {server.device}"
        log.warning("%s", message)
        store.add_event("return", message)
        store.count("backend_returns")
        self._server_in_use(server, store)
        return server

    # -- bookkeeping ------------------------------------------------------------------------
    def _go_local(self, why: str, store: Store):
        backend = self._open(self.config.local_backend)  # HipcadError: nothing can read here
        message = f"{why}; reading on this box with {backend.name} ({backend.device}) until the server answers"
        self._fell_back(message, store)
        self._server.update(in_use=False, since=time.time())
        self._retry_later(why)
        self._publish(backend, store, runtime_fallback=message)
        return backend

    def _fell_back(self, message: str, store: Store) -> None:
        log.warning("inference fell back: %s", message)
        store.add_event("fallback", message)
        store.count("backend_fallbacks")
        self.info["runtime_fallback"] = message

    def _retry_later(self, error: str) -> None:
        self._next_try = time.monotonic() + self.config.triton_retry_s
        self._server.update(error=error, next_try_at=time.time() + self.config.triton_retry_s)

    def _server_in_use(self, backend, store: Store) -> None:
        self._next_try = float("inf")
        self._server.update(in_use=True, since=time.time(), error=None, next_try_at=None, served=backend.served)
        self._publish(backend, store)

    def _publish(self, backend, store: Store, runtime_fallback: str | None = None) -> None:
        self.info = {
            "name": backend.name,
            "device": backend.device,
            "precision": backend.precision,
            "fallback_reason": backend.fallback_reason,
            "runtime_fallback": runtime_fallback,
            "load_seconds": round(backend.load_seconds or 0.0, 2),
        }
        if self.remote:
            self.info["server"] = dict(self._server)
        store.put_state("backend", self.info)
