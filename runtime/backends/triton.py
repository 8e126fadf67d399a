"""Triton backend: the bundle's model served by a Triton Inference Server (a regional server that
batches the requests of many boxes on one GPU), through ``tritonclient`` - gRPC by default, HTTP as
an option, TLS on either (gRPC: the server's own TLS or mutual TLS; HTTP: through a TLS-terminating
proxy, since tritonserver has no HTTPS of its own).

Activation checks that the server is live and ready, that the model is ready, and that the served
model *is* this bundle: the repository written by ``hipcad triton-repo`` carries the bundle's identity
as model-config parameters (``hipcad.onnx_sha256``, ``hipcad.name``, ``hipcad.operating_point``),
and the input and outputs must be the bundle's contract. A server serving anything else is refused
(:class:`ModelIdentityError`) before a radiograph is sent. ``open_backend`` then runs the bundle's
self-test through the server like for every backend.

``tritonclient`` is imported inside the methods. Its HTTP client is bound to the thread that made it
(geventhttpclient: "Cannot switch to a different thread"), so activate the backend in the thread
that uses it - the worker's inference thread does. gRPC channels get a short reconnect back-off: with
gRPC's default (up to 120 s) a client that saw the server go away needed 91 s after the server was
back to succeed again (measured here after a 30 s outage); with these settings, well under a second.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

from hipcad.runtime.backends.base import Backend, in_batches
from hipcad.runtime.errors import BackendUnavailableError
from hipcad.runtime.model.selftest import TOLERANCES

if TYPE_CHECKING:
    from hipcad.runtime.model.bundle import Bundle

#: model-config parameters that say which bundle a served model is (written by ``hipcad triton-repo``)
PARAM_PREFIX = "hipcad."
IDENTITY_KEYS = ("onnx_sha256", "name", "operating_point")
PROTOCOLS = ("grpc", "http")
DEFAULT_TIMEOUT_S = 10.0
TRITONCLIENT_MISSING = "tritonclient is not installed (pip install 'hipcad[triton]')"
GRPC_CHANNEL_ARGS = [
    # the defaults tritonclient sets when it is given no channel arguments...
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    # ...and a short reconnect back-off, so a box is back on the server soon after the server is back
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class TritonServerError(BackendUnavailableError):
    """The Triton server cannot be reached, is not ready, or failed a request."""


class ModelIdentityError(BackendUnavailableError):
    """The Triton server serves a model that is not this bundle (or not its contract)."""


def model_name_for(bundle: "Bundle") -> str:
    """The default name of a bundle's model on a server: ``hipcad_<bundle name>`` (model names are
    path parts of Triton's URLs and folder names in its repository: plain characters only)."""
    return "hipcad_" + re.sub(r"[^A-Za-z0-9_.-]", "_", bundle.name)


def address(url: str, protocol: str = "grpc", tls: bool = False) -> str:
    """How a server is named in messages: ``grpc://host:8001``, ``grpcs://…`` with TLS, ``http(s)://…``."""
    return f"{protocol}{'s' if tls else ''}://{re.sub(r'^(grpc|https?)://', '', url).rstrip('/')}"


def identity_parameters(bundle: "Bundle", precision: str | None = None) -> dict[str, str]:
    """The bundle's identity as Triton model-config parameters (string values)."""
    return {
        PARAM_PREFIX + "onnx_sha256": bundle.onnx_sha256,
        PARAM_PREFIX + "name": bundle.name,
        PARAM_PREFIX + "operating_point": bundle.operating_point,
        PARAM_PREFIX + "threshold": repr(bundle.threshold),
        PARAM_PREFIX + "precision": precision or bundle.precision,
        PARAM_PREFIX + "input_hw": "x".join(map(str, bundle.input_hw)),
    }


class TritonBackend(Backend):
    name = "triton"

    def __init__(self, bundle: "Bundle", url: str = "", model: str | None = None, protocol: str = "grpc",
                 timeout_s: float = DEFAULT_TIMEOUT_S, tls: bool = False, ca: str | None = None,
                 cert: str | None = None, key: str | None = None) -> None:
        """``url`` HOST:PORT (gRPC port 8001 or HTTP port 8000 of tritonserver by default); ``model``
        defaults to :func:`model_name_for`. TLS: ``ca`` the CA certificate (PEM) that signed the
        server's (or the proxy's) certificate, else the system's roots; ``cert`` and ``key`` this box's
        client certificate and key for mutual TLS. Any of them implies ``tls``."""
        super().__init__(bundle)
        if not url:
            raise BackendUnavailableError("the triton backend needs the server's address (--triton-url HOST:PORT, "
                                          "or triton_url in the worker's config)")
        if protocol not in PROTOCOLS:
            raise BackendUnavailableError(f"triton protocol must be grpc or http, not {protocol!r}")
        if bool(cert) != bool(key):
            raise BackendUnavailableError("mutual TLS needs both the client certificate and its key")
        url = re.sub(r"^(grpc|https?)://", "", url).rstrip("/")
        self.url, self.protocol, self.timeout_s = url, protocol, float(timeout_s)
        self.model = model or model_name_for(bundle)
        self.tls = bool(tls or ca or cert)
        self.ca, self.cert, self.key = ca, cert, key
        self.precision = bundle.precision
        self.max_batch = 0
        self.served: dict = {}  # the served model's identity parameters, platform and server version
        self._client = None
        self._tc = None  # tritonclient.grpc or tritonclient.http

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        try:
            import tritonclient.utils  # noqa: F401
        except ImportError:
            return False, TRITONCLIENT_MISSING
        return True, ""

    @property
    def address(self) -> str:
        return address(self.url, self.protocol, self.tls)

    # -- life cycle -------------------------------------------------------------------------
    def activate_impl(self) -> None:
        try:
            self._client = self._make_client()
            config, server = self._call(self._read_server)
            self._check(config)
        except BaseException:
            self.deactivate_impl()
            raise
        platform = config.get("platform") or config.get("backend") or "?"
        self.served.update(platform=platform, server_version=server.get("version"))
        self.device = f"Triton {self.model} at {self.address} ({platform}, tritonserver {server.get('version', '?')})"

    def deactivate_impl(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass

    def _make_client(self):
        try:
            if self.protocol == "grpc":
                import tritonclient.grpc as tc

                self._tc = tc
                return tc.InferenceServerClient(self.url, ssl=self.tls, root_certificates=self.ca, private_key=self.key,
                                                certificate_chain=self.cert, channel_args=GRPC_CHANNEL_ARGS)
            import tritonclient.http as tc

            self._tc = tc
            ssl_options = {k: v for k, v in (("ca_certs", self.ca), ("certfile", self.cert), ("keyfile", self.key)) if v}
            return tc.InferenceServerClient(self.url, ssl=self.tls, ssl_options=ssl_options, concurrency=1,
                                            connection_timeout=self.timeout_s, network_timeout=self.timeout_s)
        except ImportError as err:
            raise BackendUnavailableError(f"{TRITONCLIENT_MISSING} ({err})") from err
        except OSError as err:  # a TLS file that cannot be read
            raise BackendUnavailableError(f"triton backend: {err}") from err

    def _timeout(self) -> dict:
        return {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}

    def _read_server(self) -> tuple[dict, dict]:
        client, t = self._client, self._timeout()
        if not client.is_server_live(**t):
            raise TritonServerError(f"Triton at {self.address} is not live")
        if not client.is_server_ready(**t):
            raise TritonServerError(f"Triton at {self.address} is live but not ready")
        if not client.is_model_ready(self.model, **t):
            raise TritonServerError(f"Triton at {self.address} has no ready model {self.model!r}")
        if self.protocol == "grpc":
            config = client.get_model_config(self.model, as_json=True, **t).get("config", {})
            server = client.get_server_metadata(as_json=True, **t)
        else:
            config, server = client.get_model_config(self.model), client.get_server_metadata()
        return config, server

    def _call(self, fn, *args):
        """Run a tritonclient call; every failure becomes a TritonServerError naming the server.
        (HTTP connection errors are plain OSErrors or geventhttpclient's, not tritonclient's.)"""
        try:
            return fn(*args)
        except BackendUnavailableError:
            raise
        except Exception as err:
            text = str(err).strip() or type(err).__name__
            raise TritonServerError(f"Triton at {self.address}: {text}") from err

    def _check(self, config: dict) -> None:
        """The served model must be this bundle and have its inputs and outputs."""
        params = {k[len(PARAM_PREFIX):]: (v or {}).get("string_value")
                  for k, v in (config.get("parameters") or {}).items() if k.startswith(PARAM_PREFIX)}
        self.served = dict(params)
        wanted = {k: getattr(self.bundle, k) for k in IDENTITY_KEYS}
        wrong = [f"{k} {params.get(k)!r} (this box: {v!r})" for k, v in wanted.items() if params.get(k) != v]
        if wrong:
            raise ModelIdentityError(f"Triton model {self.model!r} at {self.address} is not this box's model "
                                     f"{self.bundle.name}: it serves " + ", ".join(wrong) + "; refusing to use it")
        h, w = self.bundle.input_hw
        inputs = [(i.get("name"), i.get("data_type"), [int(d) for d in i.get("dims", [])]) for i in config.get("input", [])]
        outputs = [(o.get("name"), o.get("data_type"), len(o.get("dims", []))) for o in config.get("output", [])]
        if inputs != [("image", "TYPE_UINT8", [1, h, w])] or sorted(outputs) != [("cam", "TYPE_FP32", 2), ("logits", "TYPE_FP32", 1)]:
            raise ModelIdentityError(f"Triton model {self.model!r} at {self.address} does not have the bundle's inputs and "
                                     f"outputs (image uint8 [N,1,{h},{w}]; logits, cam): {inputs} -> {outputs}")
        self.max_batch = int(config.get("max_batch_size") or 0)
        if self.max_batch < 1:
            raise ModelIdentityError(f"Triton model {self.model!r} has no batch dimension (max_batch_size "
                                     f"{self.max_batch}); write its repository with `hipcad triton-repo`")
        precision = params.get("precision") or "fp32"
        if precision not in TOLERANCES:
            raise ModelIdentityError(f"Triton model {self.model!r} declares precision {precision!r}")
        self.precision = precision

    # -- inference --------------------------------------------------------------------------
    def infer_impl(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return in_batches(lambda part: self._call(self._infer, part), batch, self.max_batch)

    def _infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tc = self._tc
        image = tc.InferInput("image", list(batch.shape), "UINT8")
        image.set_data_from_numpy(batch)
        outputs = [tc.InferRequestedOutput("logits"), tc.InferRequestedOutput("cam")]
        result = self._client.infer(self.model, [image], outputs=outputs, **self._timeout())
        logits, cam = result.as_numpy("logits"), result.as_numpy("cam")
        n = len(batch)
        if logits is None or cam is None or logits.shape != (n, 2) or cam.ndim != 3 or len(cam) != n:
            raise TritonServerError(f"Triton at {self.address} returned logits {getattr(logits, 'shape', None)} and cam "
                                    f"{getattr(cam, 'shape', None)} for a batch of {n}")
        return logits, cam

    def statistics(self) -> dict:
        """Triton's statistics of the served model (inference and execution counts, per-batch-size
        executions, queue and compute times), as JSON."""
        if self.protocol == "grpc":
            stats = self._call(lambda: self._client.get_inference_statistics(self.model, as_json=True, **self._timeout()))
        else:
            stats = self._call(lambda: self._client.get_inference_statistics(self.model))
        return (stats.get("model_stats") or [{}])[0]


def add_arguments(parser, url_flags: tuple[str, ...] = ("--triton-url",)) -> None:
    """The command-line options of the triton backend (predict, bench, parity)."""
    group = parser.add_argument_group("Triton Inference Server (--backend triton)")
    group.add_argument(*url_flags, dest="triton_url", metavar="HOST:PORT", help="the Triton server (gRPC port, or HTTP "
                       "port with --triton-protocol http)")
    group.add_argument("--triton-model", metavar="NAME", help="model name on the server (default: hipcad_<bundle name>)")
    group.add_argument("--triton-protocol", choices=PROTOCOLS, default="grpc", help="default: grpc")
    group.add_argument("--triton-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S", help="per request (default 10)")
    group.add_argument("--triton-tls", action="store_true", help="TLS (gRPC: tritonserver's own; HTTP: a TLS proxy)")
    group.add_argument("--triton-ca", metavar="PEM", help="CA certificate that signed the server's (implies --triton-tls)")
    group.add_argument("--triton-cert", metavar="PEM", help="this client's certificate, for mutual TLS")
    group.add_argument("--triton-key", metavar="PEM", help="this client's private key, for mutual TLS")


def options_from_args(args, backend: str, chosen: tuple[str, ...] = ()) -> dict:
    """open_backend keyword options for ``backend`` from :func:`add_arguments`' options. A Triton
    option given while no chosen backend (``backend`` and ``chosen``) is triton is refused."""
    if args.triton_url and "triton" not in (backend, *chosen):
        raise BackendUnavailableError("--triton-url is for --backend triton")
    if backend != "triton":
        return {}
    return {"url": args.triton_url, "model": args.triton_model, "protocol": args.triton_protocol,
            "timeout_s": args.triton_timeout, "tls": args.triton_tls, "ca": args.triton_ca,
            "cert": args.triton_cert, "key": args.triton_key}
