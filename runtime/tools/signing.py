"""``hipcad keygen``, ``hipcad sign``, ``hipcad verify``: the workstation side of signed bundles.

A signing key is an Ed25519 private key (PEM PKCS#8, encrypted with a passphrase unless
``--no-passphrase``, mode 0600) that stays on the workstation; its ``.pub`` goes into each box's
trusted-keys folder. ``hipcad export``, ``train`` and ``quantize`` (and ``evaluate
--operating-points``, which rewrites the manifest) sign what they write with the key named by
``HIPCAD_SIGNING_KEY`` (passphrase in ``HIPCAD_SIGNING_PASSPHRASE``), else they say the bundle is
unsigned. The format is described in :mod:`hipcad.runtime.model.signature`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path

from hipcad.runtime.errors import HipcadError
from hipcad.runtime.model import signature

SIGNING_KEY_ENV = "HIPCAD_SIGNING_KEY"
PASSPHRASE_ENV = "HIPCAD_SIGNING_PASSPHRASE"


def keygen(out: Path, name: str, passphrase: bytes | None) -> tuple[Path, Path, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    encryption = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    key_path, pub_path = out / f"{name}.key", out / f"{name}.pub"
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise HipcadError(f"{key_path} exists; choose another --name (a key is never overwritten)") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    pub_path.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_path, pub_path, signature.key_id(private.public_key())


def load_private_key(path: str | Path, passphrase: bytes | None = None):
    """The Ed25519 key at ``path``; an encrypted one takes ``passphrase``, else HIPCAD_SIGNING_PASSPHRASE,
    else a prompt on a terminal."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise HipcadError(f"cannot read signing key {path}: {err.strerror or err}") from err
    if passphrase is None and b"ENCRYPTED" in data:
        text = os.environ.get(PASSPHRASE_ENV)
        if text is None and sys.stdin.isatty():
            text = getpass.getpass(f"passphrase of {path}: ")
        if text is None:
            raise HipcadError(f"signing key {path} is encrypted: set {PASSPHRASE_ENV} or run on a terminal")
        passphrase = text.encode()
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except (ValueError, TypeError) as err:
        raise HipcadError(f"cannot load signing key {path}: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise HipcadError(f"{path} is not an Ed25519 private key (make one with `hipcad keygen`)")
    return key


def sign_if_configured(bundle: Path, shown_as: Path | None = None) -> dict | None:
    """Sign ``bundle`` with the key named by HIPCAD_SIGNING_KEY; without one, say it stays unsigned."""
    key_path = os.environ.get(SIGNING_KEY_ENV)
    shown = shown_as or bundle
    if not key_path:
        print(f"note: {shown} is not signed (no {SIGNING_KEY_ENV}); a box loads it only once signed: "
              f"hipcad sign {shown} --key KEY", file=sys.stderr)
        return None
    record = signature.sign(bundle, load_private_key(key_path), signer=os.environ.get("HIPCAD_SIGNER", ""))
    print(f"signed {shown} with {record['key_id']}", file=sys.stderr)
    return record


def rewrite_manifest(bundle: Path, manifest: dict) -> None:
    """Replace an existing bundle's ``manifest.json`` (atomically) and sign the bundle again: its old
    signature no longer matches (:func:`sign_if_configured`)."""
    from hipcad.runtime.durable import atomic_write
    from hipcad.runtime.model.bundle import MANIFEST

    atomic_write(Path(bundle) / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    sign_if_configured(Path(bundle))


def main_keygen(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hipcad keygen",
        description="Make an Ed25519 key pair for signing model bundles: NAME.key (private, 0600, passphrase-"
        "encrypted; keep it off the boxes) and NAME.pub (copy it into each box's trusted-keys folder).")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for NAME.key and NAME.pub")
    parser.add_argument("--name", required=True, help="file name of the pair, e.g. the signer and year")
    parser.add_argument("--no-passphrase", action="store_true", help="leave the private key unencrypted (test keys, CI)")
    args = parser.parse_args(argv)
    passphrase = None
    if not args.no_passphrase:
        text = os.environ.get(PASSPHRASE_ENV)
        if text is None:
            if not sys.stdin.isatty():
                print(f"hipcad keygen: set {PASSPHRASE_ENV}, run on a terminal, or pass --no-passphrase", file=sys.stderr)
                return 2
            text = getpass.getpass("passphrase for the new key: ")
        if len(text) < 8:
            print("hipcad keygen: use a passphrase of at least 8 characters", file=sys.stderr)
            return 2
        passphrase = text.encode()
    try:
        key_path, pub_path, kid = keygen(Path(args.out), args.name, passphrase)
    except HipcadError as err:
        print(f"hipcad keygen: {err}", file=sys.stderr)
        return 2
    print(f"{kid}\nprivate key: {key_path} (keep it off the box)\npublic key:  {pub_path} (copy it into the box's "
          f"trusted-keys folder, {signature.DEFAULT_TRUSTED_KEYS})")
    return 0


def main_sign(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hipcad sign",
        description="Sign a model bundle: the manifest gets the sha256 and size of every file, manifest.sig an "
        "Ed25519 signature over the manifest. Signing a changed bundle again replaces the signature.")
    parser.add_argument("bundle", help="model bundle folder")
    parser.add_argument("--key", default=os.environ.get(SIGNING_KEY_ENV), help=f"private key (default: ${SIGNING_KEY_ENV})")
    parser.add_argument("--signer", default=os.environ.get("HIPCAD_SIGNER", ""), help="who signs (recorded in manifest.sig)")
    args = parser.parse_args(argv)
    if not args.key:
        print(f"hipcad sign: name the key with --key or {SIGNING_KEY_ENV}", file=sys.stderr)
        return 2
    try:
        from hipcad.runtime.model.bundle import Bundle

        Bundle(args.bundle)  # a bundle at all, its paths inside it
        record = signature.sign(Path(args.bundle), load_private_key(args.key), args.signer)
    except HipcadError as err:
        print(f"hipcad sign: {err}", file=sys.stderr)
        return 1
    print(f"signed {args.bundle} with {record['key_id']} (manifest sha256 {record['manifest_sha256'][:16]}...)")
    return 0


def main_verify(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hipcad verify",
        description="Check a bundle as a box would: signed by a trusted key, every file as signed. Exit status 0 "
        "when it would load, 1 when not.")
    parser.add_argument("bundle", help="model bundle folder")
    parser.add_argument("--trusted-keys", metavar="DIR", help="folder of *.pub keys (default: $HIPCAD_TRUSTED_KEYS, "
                        f"else {signature.DEFAULT_TRUSTED_KEYS})")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    from hipcad.runtime.model.bundle import load_bundle

    trust = signature.Trust.from_environment()
    if args.trusted_keys:
        trust = signature.Trust.load(args.trusted_keys, bool(trust.demo_keys), trust.allow_unsigned)
    try:
        bundle = load_bundle(args.bundle, trust)
        for name in bundle.files:
            bundle.read_member(name)
    except HipcadError as err:
        print(json.dumps({"ok": False, "error": str(err)}) if args.json else f"hipcad verify: {err}",
              file=sys.stdout if args.json else sys.stderr)
        return 1
    sig = bundle.signature.public()
    if args.json:
        print(json.dumps({"ok": True, "files": len(bundle.files), **sig}))
    elif bundle.verified:
        print(f"OK: {args.bundle} signed by {sig['key_id']}{' (the demo key)' if sig['demo_key'] else ''}"
              f"{' - ' + sig['signer'] if sig['signer'] else ''}; {len(bundle.files)} files match")
    else:
        print(f"{bundle.notice.banner}: {sig['override']}")
    return 0
