"""Signed bundles: the box loads only a bundle signed by a trusted key, whose files are as signed and
stay inside it; tampered, unsigned and path-escaping bundles are refused with a clear message; the
development override loads an unsigned bundle and says so everywhere."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from hipcad.runtime.errors import BundleError, SelfTestError
from hipcad.runtime.model import signature
from hipcad.runtime.model.bundle import DEFAULT_BUNDLE, load_bundle
from hipcad.runtime.model.notice import UNVERIFIED
from hipcad.runtime.tools.signing import keygen, load_private_key
from tests.helpers import run_cli


@pytest.fixture
def keys(tmp_path) -> dict:
    key, pub, kid = keygen(tmp_path / "keys", "vendor", None)
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(pub, trusted)
    other, _, _ = keygen(tmp_path / "keys", "stranger", None)
    return {"key": load_private_key(key), "other": load_private_key(other), "trust": signature.Trust.load(trusted),
            "id": kid, "key_path": key, "trusted": trusted}


@pytest.fixture
def bundle(tmp_path, keys) -> Path:
    """A copy of the shipped demo bundle signed by the test vendor key."""
    path = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, path)
    signature.sign(path, keys["key"], "test vendor")
    return path


def edit_manifest(path: Path, change) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))


def test_signed_bundle_loads_and_names_its_signer(bundle, keys):
    loaded = load_bundle(bundle, keys["trust"])
    assert loaded.verified and loaded.signature.key_id == keys["id"] and loaded.signature.signer == "test vendor"
    assert set(loaded.files) == {"model.onnx", "selftest.npz", "pelvis_layout.npz"}
    assert loaded.verified_onnx_bytes and loaded.member_bytes("selftest")
    assert loaded.describe()["signature"]["verified"] is True


def test_shipped_demo_bundle_is_signed_by_the_demo_key_only_trusted_for_demos(tmp_path, keys):
    demo = load_bundle(None, signature.Trust.load(tmp_path / "empty"))  # the demo key alone
    assert demo.verified and demo.signature.demo_key and demo.synthetic_demo
    with pytest.raises(BundleError, match="not a trusted key"):
        load_bundle(None, signature.Trust.load(tmp_path / "empty", trust_demo_key=False))
    # a key trusted only as a demo key cannot vouch for a bundle that claims to be a trained clinical model
    clinical = tmp_path / "clinical"
    shutil.copytree(DEFAULT_BUNDLE, clinical)
    edit_manifest(clinical, lambda m: m.update(synthetic_demo=False))
    signature.sign(clinical, keys["key"])
    trust = keys["trust"]
    trust.demo_keys = frozenset({keys["id"]})
    with pytest.raises(BundleError, match="trusted only for synthetic-demo or untrained"):
        load_bundle(clinical, trust)


@pytest.mark.parametrize("tamper, message", [
    (lambda p: edit_manifest(p, lambda m: m["operating_points"]["default"].update(threshold=0.01)),
     "signature does not match manifest.json"),
    (lambda p: (p / "manifest.sig").unlink(), "is not signed"),
    (lambda p: (p / "manifest.sig").write_text("{garbled"), "is not a hipcad-bundle-sig/1"),
])
def test_tampered_or_unsigned_manifest_is_refused(bundle, keys, tamper, message):
    tamper(bundle)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle, keys["trust"])


def test_changed_member_is_refused_when_read(bundle, keys):
    """The review's attack: logits negated and the sha256 in the manifest rewritten. Now the manifest is
    signed, so rewriting its hash breaks the signature; changing the file alone breaks the hash."""
    with open(bundle / "model.onnx", "r+b") as fh:
        fh.seek(-64, 2)
        fh.write(b"\x01" * 8)
    loaded = load_bundle(bundle, keys["trust"])
    with pytest.raises(BundleError, match="model.onnx does not match its manifest"):
        loaded.verified_onnx_bytes
    with open(bundle / "selftest.npz", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(BundleError, match="selftest.npz does not match its manifest"):
        loaded.member_bytes("selftest")
    edit_manifest(bundle, lambda m: m["onnx"].update(sha256="0" * 64))
    with pytest.raises(BundleError, match="signature does not match"):
        load_bundle(bundle, keys["trust"])


def test_signed_by_an_untrusted_key_is_refused(tmp_path, keys):
    path = tmp_path / "stranger"
    shutil.copytree(DEFAULT_BUNDLE, path)
    signature.sign(path, keys["other"])
    with pytest.raises(BundleError, match="which is not a trusted key"):
        load_bundle(path, keys["trust"])


@pytest.mark.parametrize("name", ["../outside.onnx", "/etc/passwd", "a/../model.onnx", "./model.onnx", "model.onnx\\x",
                                  "link.onnx"])
def test_paths_leaving_the_bundle_are_refused_even_when_signed(tmp_path, keys, name):
    path = tmp_path / "escape" / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, path)
    (path.parent / "outside.onnx").write_bytes((path / "model.onnx").read_bytes())
    (path / "link.onnx").symlink_to(path.parent / "outside.onnx")
    edit_manifest(path, lambda m: m["onnx"].update(file=name))
    _sign_bytes_as_is(path, keys["key"])  # a valid signature: the path check does not depend on it
    with pytest.raises(BundleError, match="leaves the bundle|not a plain relative path|symbolic link"):
        load_bundle(path, keys["trust"])


def _sign_bytes_as_is(path: Path, private) -> None:
    """Sign whatever manifest.json holds (signature.sign would refuse such a bundle)."""
    import base64

    data = (path / "manifest.json").read_bytes()
    record = {"format": signature.SIG_FORMAT, "algorithm": "ed25519", "key_id": signature.key_id(private.public_key()),
              "signature": base64.b64encode(private.sign(signature.CONTEXT + data)).decode()}
    (path / "manifest.sig").write_text(json.dumps(record))


def test_signing_refuses_a_bundle_with_a_symlink_or_a_bad_onnx(tmp_path, keys):
    path = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, path)
    (path / "extra.bin").symlink_to("/etc/hostname")
    with pytest.raises(BundleError, match="symbolic link"):
        signature.sign(path, keys["key"])
    (path / "extra.bin").unlink()
    (path / "model.onnx").write_bytes(b"not the model")
    with pytest.raises(BundleError, match="re-export it, do not sign it"):
        signature.sign(path, keys["key"])


def test_a_missing_self_test_is_a_failure(tmp_path, keys):
    from hipcad.runtime.backends import open_backend

    path = tmp_path / "noselftest"
    shutil.copytree(DEFAULT_BUNDLE, path)
    (path / "selftest.npz").unlink()
    edit_manifest(path, lambda m: m.pop("selftest"))
    with pytest.raises(BundleError, match="selftest.file"):
        signature.sign(path, keys["key"])  # signing refuses it
    _resign_without_checks(path, keys["key"])
    with pytest.raises(SelfTestError, match="has no self-test data"):
        open_backend("onnxruntime", load_bundle(path, keys["trust"]))


def _resign_without_checks(path: Path, private) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"] = {"model.onnx": manifest["files"]["model.onnx"]}
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))
    _sign_bytes_as_is(path, private)


def test_development_override_loads_unsigned_with_a_notice_everywhere(bundle, keys, tmp_path):
    (bundle / "manifest.sig").unlink()
    override = signature.Trust(keys["trust"].keys, allow_unsigned=True)
    loaded = load_bundle(bundle, override)
    assert not loaded.verified and loaded.notice is UNVERIFIED and "is not signed" in loaded.signature.override
    assert "UNVERIFIED MODEL BUNDLE" in loaded.label
    with open(bundle / "model.onnx", "ab") as fh:  # the override skips the signature, never the hashes
        fh.write(b"x")
    with pytest.raises(BundleError, match="does not match its manifest"):
        load_bundle(bundle, override).verified_onnx_bytes
    from hipcad.appliance.kiosk.views import banners

    model = {**loaded.describe(), "name": "x"}
    health = {"worker": {"up": True}, "model": model, "backend": {}, "dicom": {}}
    assert any("UNVERIFIED MODEL BUNDLE" in b["text"] for b in banners(health))


def test_predict_refuses_unsigned_and_shows_the_override(tmp_path):
    from hipcad.runtime.synth import generate

    path = tmp_path / "unsigned"
    shutil.copytree(DEFAULT_BUNDLE, path)
    (path / "manifest.sig").unlink()
    image = generate(tmp_path / "img", 1, seed=3, size=(320, 256), formats="jpeg", progress=False)[0].path
    proc = run_cli("predict", str(image), "--model", str(path), "--json")
    assert proc.returncode == 2 and "is not signed" in proc.stderr and "hipcad sign" in proc.stderr, proc.stderr
    proc = run_cli("predict", str(image), "--model", str(path), "--json",
                   env={**os.environ, "HIPCAD_ALLOW_UNSIGNED_BUNDLES": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "UNVERIFIED MODEL BUNDLE" in proc.stderr
    assert json.loads(proc.stdout)["model"]["verified"] is False


def test_cli_keygen_sign_verify_round_trip(tmp_path):
    env = {**os.environ, "HIPCAD_SIGNING_PASSPHRASE": "correct horse battery"}
    proc = run_cli("keygen", "--out", str(tmp_path / "k"), "--name", "site", env=env)
    assert proc.returncode == 0, proc.stderr
    assert oct((tmp_path / "k" / "site.key").stat().st_mode & 0o777) == "0o600"
    assert b"ENCRYPTED" in (tmp_path / "k" / "site.key").read_bytes()
    path = tmp_path / "b"
    shutil.copytree(DEFAULT_BUNDLE, path)
    proc = run_cli("sign", str(path), "--key", str(tmp_path / "k" / "site.key"), env=env)
    assert proc.returncode == 0, proc.stderr
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    proc = run_cli("verify", str(path), "--trusted-keys", str(trusted))
    assert proc.returncode == 1 and "not a trusted key" in proc.stderr
    shutil.copy(tmp_path / "k" / "site.pub", trusted)
    proc = run_cli("verify", str(path), "--trusted-keys", str(trusted))
    assert proc.returncode == 0 and proc.stdout.startswith("OK:"), proc.stdout + proc.stderr
    proc = run_cli("sign", str(path), "--key", str(tmp_path / "k" / "site.key"),
                   env={k: v for k, v in os.environ.items() if k != "HIPCAD_SIGNING_PASSPHRASE"}, stdin=subprocess_devnull())
    assert proc.returncode == 1 and "is encrypted" in proc.stderr


def subprocess_devnull():
    import subprocess

    return subprocess.DEVNULL
