"""The appliance's configuration: one flat TOML file, every key also settable from the environment.

Precedence: built-in defaults < the TOML file (``--config FILE``) < environment variables named
``HIPCAD_<KEY>`` (upper case), so a systemd unit can override a key with an ``Environment=`` line.
Every key is documented in ``systemd/hipcad.toml.example``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from hipcad.runtime.errors import HipcadError

ENV_PREFIX = "HIPCAD_"
# the worker's backends (not torch: a box has none); onnxruntime-cuda / -tensorrt need onnxruntime-gpu;
# triton: a regional server (local_backend reads while it is unreachable)
BACKENDS = ("auto", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt", "triton")
LOOPBACK = ("127.0.0.1", "::1", "localhost")
LOCAL_BACKENDS = tuple(b for b in BACKENDS if b != "triton")


class ConfigError(HipcadError):
    """The configuration is missing a key, has a bad value, or is unsafe."""


@dataclass
class Config:
    # -- worker -----------------------------------------------------------------------------
    hot_folder: Path = Path("/var/lib/hipcad/hot")
    data_dir: Path = Path("/var/lib/hipcad/data")
    model: str = ""  # model bundle folder; empty = the bundled demo model
    trusted_keys: Path = Path("/etc/hipcad/trusted-keys")  # *.pub: the keys model bundles may be signed with
    trust_demo_key: bool = True  # the shipped demo key (only ever valid for synthetic-demo / untrained bundles)
    allow_unsigned_bundles: bool = False  # development override: load unsigned bundles, with a banner everywhere
    engine_cache_dir: str = ""  # TensorRT plans built by hipcad-engine.service (read-only for the worker); empty: BUNDLE/engines
    backend: str = "auto"  # one of BACKENDS
    # -- a regional Triton Inference Server (backend = "triton") ------------------------------------
    triton_url: str = ""  # HOST:PORT of its gRPC (or, with triton_protocol = "http", HTTP) endpoint
    triton_model: str = ""  # model name on the server; empty: hipcad_<bundle name>
    triton_protocol: str = "grpc"  # grpc | http
    triton_timeout_s: float = 5.0  # per request
    triton_tls: bool = False
    triton_ca: str = ""  # CA certificate (PEM) of the server's certificate; empty: the system's roots
    triton_cert: str = ""  # this box's client certificate (PEM), for mutual TLS
    triton_key: str = ""  # and its private key
    triton_retry_s: float = 30.0  # while reading locally, how often the server is tried again
    local_backend: str = "auto"  # the box's own backend while the server is unreachable: one of LOCAL_BACKENDS
    polling: bool = False  # PollingObserver instead of inotify (network shares)
    poll_interval_s: float = 2.0
    rescan_interval_s: float = 60.0
    settle_s: float = 1.0  # a file found by a rescan / polling: unchanged this long and no writer
    quiet_s: float = 30.0  # ... or, where writers cannot be checked (network share), unchanged this long
    min_free_mb: int = 500
    retention_days: float = 30.0  # 0 keeps everything
    max_attempts: int = 3  # worker deaths while reading one file before it is quarantined
    watchdog_stale_s: float = 20.0  # no WATCHDOG=1 when a thread's heartbeat is older (+ decode_timeout_s while decoding)
    decode_isolation: bool = True  # decode each file in a separate, disposable process
    decode_timeout_s: float = 30.0  # a file taking longer to decode is refused (isolation only)
    decode_memory_mb: int = 3072  # address space a decoding process may add for one file
    truth_labels: str = ""  # a dataset folder (labels.csv) giving the truth per file name, for reader studies
    heatmap: str = "suspected"  # the overlay's heatmap: on hips with a suspected fracture, or "all" (the paper's look)
    score_ineligible: bool = False  # research only: score images the model is not for (they stay "not eligible")
    log_level: str = "INFO"
    # -- kiosk ------------------------------------------------------------------------------
    kiosk_bind: str = "127.0.0.1"
    kiosk_port: int = 8080
    kiosk_users_file: str = ""  # named reader accounts, NAME:HASH lines (`hipcad kiosk --add-user NAME`)
    kiosk_user: str = "doctor"  # one more account: kiosk_user / kiosk_password_hash
    kiosk_password_hash: str = ""  # werkzeug hash; `hipcad kiosk --hash-password`
    kiosk_allow_unauthenticated_loopback: bool = False  # no login on loopback (a single-user demo screen)
    kiosk_tls_cert: str = ""  # PEM certificate (chain) and key: the kiosk speaks HTTPS (required off loopback)
    kiosk_tls_key: str = ""
    kiosk_trusted_hosts: list[str] = field(default_factory=list)  # Host names the kiosk answers to (+ loopback)
    kiosk_idle_timeout_s: float = 900.0  # a signed-in session ends after this long without activity
    kiosk_secret_key: str = ""  # empty: generated once and kept in data_dir/db/kiosk.secret
    kiosk_threads: int = 8  # cheroot's threads; each live screen's news stream holds one
    kiosk_push_streams: int = 4  # news streams (Server-Sent Events) at once; more screens poll; 0: all poll
    heartbeat_stale_s: float = 30.0
    read_first: bool = False
    history_size: int = 50
    drift_window_days: int = 14  # /admin/drift and /metrics: the days compared with the model's validation
    drift_recent: int = 100  # ... and the last this many hips per side (and radiographs, for the rates)
    # -- DICOM node (listener and results to PACS) ---------------------------------------------------
    dicom_port: int = 0  # the storage SCP's TCP port; 0: no listener
    dicom_bind: str = "127.0.0.1"
    dicom_ae_title: str = "HIPCAD"  # ours: called AE of the listener, calling AE towards PACS
    dicom_allowed_aets: list[str] = field(default_factory=list)  # calling AE titles accepted (empty: any)
    dicom_allowed_hosts: list[str] = field(default_factory=list)  # addresses / networks accepted (required)
    dicom_max_pdu: int = 262144  # Maximum Length Receive we advertise and enforce on every PDU
    dicom_max_object_mb: int = 256  # largest C-STORE data set accepted (0xA700 Out of Resources beyond)
    dicom_max_associations: int = 4  # established associations at once
    dicom_max_connections: int = 8  # TCP connections at once, negotiating ones included
    dicom_max_pending_per_host: int = 2  # connections per host not yet associated (half-open)
    dicom_handshake_s: float = 10.0  # connect -> TLS -> association accepted, at most
    dicom_tls: bool = False  # the listener speaks DICOM TLS only (client certificate required)
    dicom_tls_cert: str = ""  # our certificate (PEM), also presented to PACS unless pacs_tls_cert
    dicom_tls_key: str = ""
    dicom_tls_ca: str = ""  # the CA that issued the modalities' client certificates
    pacs_destinations: list[str] = field(default_factory=list)  # "AE@host:port": results go there
    pacs_retry_initial_s: float = 10.0
    pacs_retry_max_s: float = 600.0
    pacs_tls: bool = False  # results to PACS over DICOM TLS
    pacs_tls_ca: str = ""  # the CA that issued the PACS certificates
    pacs_tls_cert: str = ""  # our client certificate towards PACS (default: dicom_tls_cert)
    pacs_tls_key: str = ""
    #: where the config came from (not a key)
    source: str = field(default="defaults", compare=False)

    # -- derived ----------------------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        """The SQLite store, in its own folder: the only place under data_dir the kiosk may write."""
        return self.data_dir / "db" / "hipcad.sqlite3"

    def trust(self):
        """The keys a model bundle may be signed with (:class:`hipcad.runtime.model.signature.Trust`)."""
        from hipcad.runtime.model.signature import Trust

        return Trust.load(self.trusted_keys, self.trust_demo_key, self.allow_unsigned_bundles)

    @property
    def needs_auth(self) -> bool:
        """Off loopback, or unless the config explicitly opens loopback: every request needs a login."""
        return self.kiosk_bind not in LOOPBACK or not self.kiosk_allow_unauthenticated_loopback

    @property
    def kiosk_tls(self) -> bool:
        return bool(self.kiosk_tls_cert)

    def backend_options(self, name: str) -> dict:
        """open_backend keyword options for backend ``name``."""
        if name != "triton":
            return {}
        return {"url": self.triton_url, "model": self.triton_model or None, "protocol": self.triton_protocol,
                "timeout_s": self.triton_timeout_s, "tls": self.triton_tls, "ca": self.triton_ca or None,
                "cert": self.triton_cert or None, "key": self.triton_key or None}

    def validate(self) -> "Config":
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.local_backend not in LOCAL_BACKENDS:
            raise ConfigError(f"local_backend must be {', '.join(LOCAL_BACKENDS)}, not {self.local_backend!r}")
        self._validate_triton()
        for name in ("poll_interval_s", "rescan_interval_s", "heartbeat_stale_s", "watchdog_stale_s", "decode_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.settle_s < 0 or self.quiet_s < 0 or self.min_free_mb < 0 or self.retention_days < 0:
            raise ConfigError("settle_s, quiet_s, min_free_mb and retention_days must not be negative")
        if self.decode_memory_mb < 256:
            raise ConfigError("decode_memory_mb must be at least 256")
        if self.heatmap not in ("suspected", "all"):
            raise ConfigError(f"heatmap must be suspected or all, not {self.heatmap!r}")
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if not 1 <= self.drift_window_days <= 56 or not 10 <= self.drift_recent <= 4000:
            raise ConfigError("drift_window_days must be between 1 and 56, drift_recent between 10 and 4000")
        if self.kiosk_push_streams < 0 or self.kiosk_push_streams > self.kiosk_threads - 2:
            raise ConfigError(f"kiosk_push_streams must be between 0 and kiosk_threads - 2 ({max(self.kiosk_threads - 2, 0)}): "
                              "each news stream holds one of the kiosk's threads, and pages and images need two")
        if not 0 < self.kiosk_port < 65536 and self.kiosk_port != 0:
            raise ConfigError(f"kiosk_port {self.kiosk_port} is not a port number")
        if bool(self.kiosk_tls_cert) != bool(self.kiosk_tls_key):
            raise ConfigError("kiosk_tls_cert and kiosk_tls_key go together")
        if self.kiosk_idle_timeout_s <= 0:
            raise ConfigError("kiosk_idle_timeout_s must be positive")
        self._validate_dicom()
        if self.hot_folder.resolve() == self.data_dir.resolve():
            raise ConfigError("hot_folder and data_dir must be different folders")
        return self


    def _validate_triton(self) -> None:
        if self.backend == "triton" and not self.triton_url:
            raise ConfigError("backend = \"triton\" needs triton_url (HOST:PORT of the inference server)")
        if self.triton_protocol not in ("grpc", "http"):
            raise ConfigError(f"triton_protocol must be grpc or http, not {self.triton_protocol!r}")
        if self.triton_retry_s <= 0 or self.triton_timeout_s <= 0:
            raise ConfigError("triton_retry_s and triton_timeout_s must be positive")
        if self.backend == "triton" and self.triton_timeout_s * 2 > self.watchdog_stale_s:
            # the inference thread waits on the server; the stuck check must not take that for a hang
            raise ConfigError(f"triton_timeout_s ({self.triton_timeout_s:g}) must be at most half of watchdog_stale_s "
                              f"({self.watchdog_stale_s:g})")
        if bool(self.triton_cert) != bool(self.triton_key):
            raise ConfigError("triton_cert and triton_key go together (mutual TLS)")
        for name in ("triton_ca", "triton_cert", "triton_key"):
            path = getattr(self, name)
            if self.backend == "triton" and path and not Path(path).is_file():
                raise ConfigError(f"{name}: {path} does not exist")

    def _validate_dicom(self) -> None:
        if not 0 <= self.dicom_port < 65536:
            raise ConfigError(f"dicom_port {self.dicom_port} is not a port number (0: no listener)")
        check_ae_title(self.dicom_ae_title, "dicom_ae_title")
        for title in self.dicom_allowed_aets:
            check_ae_title(title, "dicom_allowed_aets")
        for host in self.dicom_allowed_hosts:
            try:
                ipaddress.ip_network(host, strict=False)
            except ValueError:
                raise ConfigError(f"dicom_allowed_hosts: {host!r} is not an IP address or network (e.g. 10.1.2.0/24)") from None
        if self.dicom_port and not self.dicom_allowed_hosts:
            raise ConfigError("dicom_port is set but dicom_allowed_hosts is not: the listener would accept anyone (a "
                              "calling AE title is whatever the caller says); list the modalities' addresses (or set "
                              "dicom_allowed_hosts = [\"0.0.0.0/0\", \"::/0\"] deliberately: it is logged at every start)")
        for name, low in (("dicom_max_pdu", 4096), ("dicom_max_object_mb", 1), ("dicom_max_associations", 1),
                          ("dicom_max_connections", 1), ("dicom_max_pending_per_host", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be at least {low}")
        if self.dicom_max_connections < self.dicom_max_associations:
            raise ConfigError("dicom_max_connections must be at least dicom_max_associations")
        if self.dicom_handshake_s <= 0:
            raise ConfigError("dicom_handshake_s must be positive")
        if self.dicom_tls and not (self.dicom_tls_cert and self.dicom_tls_key and self.dicom_tls_ca):
            raise ConfigError("dicom_tls needs dicom_tls_cert, dicom_tls_key and dicom_tls_ca (the modalities' CA)")
        if self.pacs_tls and not self.pacs_tls_ca:
            raise ConfigError("pacs_tls needs pacs_tls_ca (the CA that issued the PACS certificates)")
        seen = set()
        for text in self.pacs_destinations:
            key = parse_destination(text)
            if key in seen:
                raise ConfigError(f"pacs_destinations: {text!r} is listed twice")
            seen.add(key)
        if self.pacs_retry_initial_s <= 0 or self.pacs_retry_max_s < self.pacs_retry_initial_s:
            raise ConfigError("pacs_retry_initial_s must be positive and pacs_retry_max_s at least as large")


_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII without backslash, at most 16
_DEST_RE = re.compile(r"^(?P<ae>[^@]{1,16})@(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>\d{1,5})$")


def check_ae_title(title: str, key: str) -> str:
    if not _AE_RE.match(title) or not title.strip():
        raise ConfigError(f"{key}: {title!r} is not an AE title (1 to 16 printable ASCII characters, no backslash)")
    return title.strip()


def parse_destination(text: str) -> tuple[str, str, int]:
    """``"PACS@10.0.0.5:104"`` (or ``"PACS@[fd00::5]:104"``) -> (AE title, host, port)."""
    match = _DEST_RE.match(text.strip())
    if not match:
        raise ConfigError(f"pacs_destinations: {text!r} is not AE@host:port (e.g. \"PACS@10.0.0.5:104\")")
    port = int(match["port"])
    if not 0 < port < 65536:
        raise ConfigError(f"pacs_destinations: {text!r}: {port} is not a port number")
    return check_ae_title(match["ae"], "pacs_destinations"), match["ip6"] or match["host"], port


KEYS = {f.name: f for f in dataclasses.fields(Config) if f.name != "source"}


def _convert(name: str, value, origin: str):
    kind = KEYS[name].type
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError("not an integer")
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError("not a number")
            return float(value)
        if kind == "list[str]":
            if isinstance(value, str):  # from the environment: comma-separated
                return [part.strip() for part in value.split(",") if part.strip()]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError("not a list of strings")
            return [v.strip() for v in value]
        if kind == "Path":
            return Path(str(value)).expanduser()
        return str(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{origin}: bad value for {name}: {err}") from None


def load_config(path: str | os.PathLike | None = None, environ: dict | None = None, **overrides) -> Config:
    """Defaults, then the TOML file, then ``HIPCAD_*`` variables, then ``overrides``."""
    environ = os.environ if environ is None else environ
    values: dict = {}
    sources = ["defaults"]
    if path is None and environ.get(ENV_PREFIX + "CONFIG"):
        path = environ[ENV_PREFIX + "CONFIG"]
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as err:
            raise ConfigError(f"cannot read config {path}: {err.strerror or err}") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config {path} is not valid TOML: {err}") from err
        unknown = sorted(set(data) - set(KEYS))
        if unknown:
            raise ConfigError(f"config {path}: unknown key(s) {', '.join(unknown)}")
        values.update({k: _convert(k, v, str(path)) for k, v in data.items()})
        sources.append(str(path))
    for name in KEYS:
        env_name = ENV_PREFIX + name.upper()
        if env_name in environ:
            values[name] = _convert(name, environ[env_name], env_name)
            sources.append(env_name)
    values.update({k: _convert(k, v, "override") for k, v in overrides.items()})
    return Config(**values, source=", ".join(sources)).validate()
