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
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class ConfigError(HipcadError):
    """The configuration is missing a key, has a bad value, or is unsafe."""


@dataclass
class Config:
    # -- worker -----------------------------------------------------------------------------
    hot_folder: Path = Path("/var/lib/hipcad/hot")
    data_dir: Path = Path("/var/lib/hipcad/data")
    model: str = ""  # model bundle folder; empty = the bundled demo model
    backend: str = "auto"  # auto | onnxruntime | tensorrt
    polling: bool = False  # PollingObserver instead of inotify (network shares)
    poll_interval_s: float = 2.0
    rescan_interval_s: float = 60.0
    settle_s: float = 1.0  # a file's size and mtime must stay unchanged this long
    min_free_mb: int = 500
    retention_days: float = 30.0  # 0 keeps everything
    max_attempts: int = 3  # worker deaths while reading one file before it is quarantined
    watchdog_stale_s: float = 20.0  # no WATCHDOG=1 when a thread's heartbeat is older
    truth_labels: str = ""  # a dataset folder (labels.csv) giving the truth per file name, for reader studies
    log_level: str = "INFO"
    # -- kiosk ------------------------------------------------------------------------------
    kiosk_bind: str = "127.0.0.1"
    kiosk_port: int = 8080
    kiosk_user: str = "doctor"
    kiosk_password_hash: str = ""  # werkzeug hash; `hipcad kiosk --hash-password`
    kiosk_secret_key: str = ""  # empty: generated once and kept in data_dir/kiosk.secret
    kiosk_threads: int = 8  # waitress threads; each live screen's news stream holds one
    kiosk_push_streams: int = 4  # news streams (Server-Sent Events) at once; more screens poll; 0: all poll
    heartbeat_stale_s: float = 30.0
    read_first: bool = False
    history_size: int = 50
    # -- DICOM node (listener and results to PACS) ---------------------------------------------------
    dicom_port: int = 0  # the storage SCP's TCP port; 0: no listener
    dicom_bind: str = "127.0.0.1"
    dicom_ae_title: str = "HIPCAD"  # ours: called AE of the listener, calling AE towards PACS
    dicom_allowed_aets: list[str] = field(default_factory=list)  # calling AE titles accepted (empty: any)
    dicom_allowed_hosts: list[str] = field(default_factory=list)  # addresses / networks accepted (empty: any)
    pacs_destinations: list[str] = field(default_factory=list)  # "AE@host:port": results go there
    pacs_retry_initial_s: float = 10.0
    pacs_retry_max_s: float = 600.0
    #: where the config came from (not a key)
    source: str = field(default="defaults", compare=False)

    # -- derived ----------------------------------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.data_dir / "hipcad.sqlite3"

    @property
    def needs_auth(self) -> bool:
        return self.kiosk_bind not in LOOPBACK or bool(self.kiosk_password_hash)

    def validate(self) -> "Config":
        if self.backend not in ("auto", "onnxruntime", "tensorrt"):
            raise ConfigError(f"backend must be auto, onnxruntime or tensorrt, not {self.backend!r}")
        for name in ("poll_interval_s", "rescan_interval_s", "heartbeat_stale_s", "watchdog_stale_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.settle_s < 0 or self.min_free_mb < 0 or self.retention_days < 0:
            raise ConfigError("settle_s, min_free_mb and retention_days must not be negative")
        if self.max_attempts < 1:
            raise ConfigError("max_attempts must be at least 1")
        if self.kiosk_push_streams < 0 or self.kiosk_push_streams > self.kiosk_threads - 2:
            raise ConfigError(f"kiosk_push_streams must be between 0 and kiosk_threads - 2 ({max(self.kiosk_threads - 2, 0)}): "
                              "each news stream holds one of the kiosk's threads, and pages and images need two")
        if not 0 < self.kiosk_port < 65536 and self.kiosk_port != 0:
            raise ConfigError(f"kiosk_port {self.kiosk_port} is not a port number")
        self._validate_dicom()
        if self.hot_folder.resolve() == self.data_dir.resolve():
            raise ConfigError("hot_folder and data_dir must be different folders")
        return self


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
        if self.dicom_port and not self.dicom_allowed_aets and not self.dicom_allowed_hosts:
            raise ConfigError("dicom_port is set but neither dicom_allowed_aets nor dicom_allowed_hosts is: the listener "
                              "would accept anyone; list the modalities (or set dicom_allowed_hosts = [\"0.0.0.0/0\"] "
                              "deliberately)")
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
