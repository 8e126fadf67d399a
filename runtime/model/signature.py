"""Who made a model bundle: Ed25519 signatures over the manifest, and the keys a box trusts.

``manifest.json`` lists every file of the bundle with its sha256 and size (``files``; the local plan
cache ``engines/`` excepted). ``manifest.sig`` beside it holds an Ed25519 signature over the
manifest's bytes exactly as stored (prefixed with ``hipcad-bundle-sig/1\\0``, so the signature is
valid for nothing else), the signing key's id and who signed. The loader reads the manifest's bytes
once, verifies them, and parses those same bytes; each member is hashed when it is read
(:meth:`hipcad.runtime.model.bundle.Bundle.read_member`), so what was checked is what runs.

Trusted keys (:class:`Trust`): the ``*.pub`` files (PEM) in the trusted-keys folder (config key
``trusted_keys``, environment ``HIPCAD_TRUSTED_KEYS``, default ``/etc/hipcad/trusted-keys``), and the
demo key shipped with hipcad (``keys/demo-development.pub``). The demo key's private half was
destroyed once the demo bundle was signed, and it is accepted only for a bundle that declares itself
a synthetic demo or untrained (so it always carries that notice); ``trust_demo_key = false`` refuses
it altogether. ``allow_unsigned_bundles`` (``HIPCAD_ALLOW_UNSIGNED_BUNDLES=1``) is a development
override: an unsigned or unverifiable bundle then loads, and every output and screen says so.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from hipcad.runtime.errors import BundleError

SIGNATURE_FILE = "manifest.sig"
SIG_FORMAT = "hipcad-bundle-sig/1"
CONTEXT = SIG_FORMAT.encode() + b"\0"
NOT_SIGNED = {"manifest.json", SIGNATURE_FILE, "engines"}  # top-level names outside the files table
DEFAULT_TRUSTED_KEYS = Path("/etc/hipcad/trusted-keys")
DEMO_KEY = Path(__file__).resolve().parent / "keys" / "demo-development.pub"


class SignatureError(BundleError):
    """The bundle is not signed by a trusted key, or does not match what was signed."""


def key_id(public) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as err:
        raise SignatureError(f"cannot read public key {path}: {err}") from err
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} is not an Ed25519 public key")
    return key


def safe_member(bundle: Path, name, must_exist: bool = True) -> Path:
    """The path of a file named by the manifest, only if it is a regular file inside the bundle:
    relative, POSIX, normalised (no '..', '.', empty parts, backslash or NUL), no symbolic link."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        raise BundleError(f"bundle {bundle}: manifest path {name!r} is not a plain relative path")
    pure = PurePosixPath(name)
    if pure.is_absolute() or any(part in ("..", ".", "") for part in name.split("/")) or str(pure) != name:
        raise BundleError(f"bundle {bundle}: manifest path {name!r} leaves the bundle or is not normalised; refusing it")
    path = Path(bundle)
    for part in name.split("/"):
        path = path / part
        if path.is_symlink():
            raise BundleError(f"bundle {bundle}: manifest path {name!r} goes through a symbolic link; refusing it")
    if not path.resolve().is_relative_to(Path(bundle).resolve()):
        raise BundleError(f"bundle {bundle}: manifest path {name!r} resolves outside the bundle; refusing it")
    if must_exist and not path.is_file():
        raise BundleError(f"bundle {bundle}: {name} is missing")
    return path


def list_members(bundle: Path) -> list[str]:
    """Every file of the bundle that the files table must cover."""
    names = []
    for path in sorted(Path(bundle).rglob("*")):
        rel = path.relative_to(bundle)
        if rel.parts[0] in NOT_SIGNED or rel.parts[0].startswith("."):
            continue
        if path.is_symlink():
            raise SignatureError(f"{rel} is a symbolic link: a bundle holds regular files only")
        if path.is_file():
            names.append(rel.as_posix())
    return names


def _truthy(text: str | None) -> bool:
    return str(text or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class Trust:
    """The keys bundles may be signed with, and whether the development override is on."""

    keys: dict = field(default_factory=dict)  # key id -> Ed25519PublicKey
    demo_keys: frozenset = frozenset()  # ids accepted only for synthetic-demo / untrained bundles
    allow_unsigned: bool = False
    folder: Path | None = None

    @classmethod
    def load(cls, folder: str | Path | None = None, trust_demo_key: bool = True, allow_unsigned: bool = False) -> "Trust":
        folder = Path(folder) if folder else DEFAULT_TRUSTED_KEYS
        keys = {}
        if folder.is_dir():
            for path in sorted(folder.glob("*.pub")):
                key = load_public_key(path)
                keys[key_id(key)] = key
        demo = set()
        if trust_demo_key and DEMO_KEY.is_file():
            key = load_public_key(DEMO_KEY)
            demo.add(key_id(key))
            keys.setdefault(key_id(key), key)
        return cls(keys, frozenset(demo), allow_unsigned, folder)

    @classmethod
    def from_environment(cls, environ=None) -> "Trust":
        """``HIPCAD_TRUSTED_KEYS``, ``HIPCAD_TRUST_DEMO_KEY`` (default on), ``HIPCAD_ALLOW_UNSIGNED_BUNDLES``:
        the same names as the box's config keys."""
        env = os.environ if environ is None else environ
        return cls.load(env.get("HIPCAD_TRUSTED_KEYS") or None,
                        trust_demo_key=_truthy(env.get("HIPCAD_TRUST_DEMO_KEY", "1")),
                        allow_unsigned=_truthy(env.get("HIPCAD_ALLOW_UNSIGNED_BUNDLES")))


@dataclass(frozen=True)
class Verification:
    """What the loader found out about a bundle's origin."""

    verified: bool
    key_id: str | None = None
    signer: str | None = None
    demo_key: bool = False
    override: str | None = None  # why it loaded anyway (development override), else None

    def public(self) -> dict:
        return {"verified": self.verified, "key_id": self.key_id, "signer": self.signer, "demo_key": self.demo_key,
                "override": self.override}


def verify(bundle: Path, manifest_bytes: bytes, manifest: dict, trust: Trust) -> Verification:
    """Check ``manifest.sig`` against the manifest's bytes and the trusted keys. Under the
    development override a failure is returned as ``override`` instead of raised."""
    try:
        return _verify(bundle, manifest_bytes, manifest, trust)
    except SignatureError as err:
        if not trust.allow_unsigned:
            raise
        return Verification(False, override=str(err))


def _verify(bundle: Path, data: bytes, manifest: dict, trust: Trust) -> Verification:
    from cryptography.exceptions import InvalidSignature

    where = f"model bundle {bundle}"
    sig_path = Path(bundle) / SIGNATURE_FILE
    if not sig_path.is_file() or sig_path.is_symlink():
        raise SignatureError(f"{where} is not signed ({SIGNATURE_FILE} is missing); a box loads only bundles signed by a "
                             "trusted key: sign it with `hipcad sign BUNDLE --key KEY` and put the public key in "
                             f"{trust.folder or DEFAULT_TRUSTED_KEYS}")
    try:
        record = json.loads(sig_path.read_bytes())
        assert isinstance(record, dict) and record.get("format") == SIG_FORMAT and record.get("algorithm") == "ed25519"
        signature = base64.b64decode(record.get("signature", ""), validate=True)
    except (OSError, ValueError, AssertionError):
        raise SignatureError(f"{where}: {SIGNATURE_FILE} is not a {SIG_FORMAT} Ed25519 signature") from None
    kid = str(record.get("key_id"))[:64]
    key = trust.keys.get(kid)
    if key is None:
        raise SignatureError(f"{where} is signed by {kid}, which is not a trusted key (trusted: "
                             f"{', '.join(sorted(trust.keys)) or 'none'}; folder {trust.folder or DEFAULT_TRUSTED_KEYS})")
    try:
        key.verify(signature, CONTEXT + data)
    except InvalidSignature:
        raise SignatureError(f"{where}: the signature does not match manifest.json (changed after signing?); "
                             "refusing it") from None
    demo = kid in trust.demo_keys
    if demo and manifest.get("trained", False) and not manifest.get("synthetic_demo", False):
        raise SignatureError(f"{where} is signed with the demo key, which is trusted only for synthetic-demo or "
                             "untrained bundles; this one says it is a trained clinical model")
    if not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        raise SignatureError(f"{where}: the signed manifest lists no files")
    return Verification(True, kid, str(record.get("signer", ""))[:200], demo)


def sign(bundle: Path, private, signer: str = "") -> dict:
    """Fill in the manifest's files table, write it, and sign its bytes (``manifest.sig``)."""
    import time

    from hipcad.runtime.durable import atomic_write

    bundle = Path(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    files = {}
    for name in list_members(bundle):
        digest = hashlib.sha256(safe_member(bundle, name).read_bytes()).hexdigest()
        files[name] = {"sha256": digest, "size": (bundle / name).stat().st_size}
    for entry_key in ("onnx", "selftest"):
        entry = manifest.get(entry_key) or {}
        if entry.get("file") not in files:
            raise SignatureError(f"bundle {bundle}: manifest {entry_key}.file {entry.get('file')!r} is not a file of "
                                 "the bundle; not signing it")
    if files[manifest["onnx"]["file"]]["sha256"] != manifest["onnx"].get("sha256"):
        raise SignatureError(f"bundle {bundle}: {manifest['onnx']['file']} does not match the manifest's onnx.sha256; "
                             "re-export it, do not sign it")
    manifest["files"] = files
    data = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
    atomic_write(bundle / "manifest.json", data)
    record = {"format": SIG_FORMAT, "algorithm": "ed25519", "key_id": key_id(private.public_key()),
              "manifest_sha256": hashlib.sha256(data).hexdigest(), "signer": signer,
              "signed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "signature": base64.b64encode(private.sign(CONTEXT + data)).decode("ascii")}
    atomic_write(bundle / SIGNATURE_FILE, (json.dumps(record, indent=2) + "\n").encode("utf-8"))
    return record
