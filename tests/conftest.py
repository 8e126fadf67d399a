"""Shared fixtures. The expensive one, an exported EfficientNet-B4 bundle, is made once per run."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.helpers import run_cli, trained_like_b4_state_dict


def _test_signing_key() -> None:
    """Every bundle the suite makes (export, train, quantize, through the CLI or not) is signed with a
    test key, and every load trusts it: the same environment a workstation and a box would have
    (HIPCAD_SIGNING_KEY where bundles are made, HIPCAD_TRUSTED_KEYS where they are loaded)."""
    from hipcad.runtime.tools.signing import keygen

    folder = Path(tempfile.mkdtemp(prefix="hipcad-test-keys-"))
    atexit.register(shutil.rmtree, folder, True)
    key, pub, _ = keygen(folder / "private", "test-signer", None)
    (folder / "trusted").mkdir()
    shutil.copy(pub, folder / "trusted" / pub.name)
    os.environ["HIPCAD_SIGNING_KEY"] = str(key)
    os.environ["HIPCAD_TRUSTED_KEYS"] = str(folder / "trusted")
    os.environ.pop("HIPCAD_ALLOW_UNSIGNED_BUNDLES", None)


_test_signing_key()


@pytest.fixture(scope="session")
def b4_checkpoint(tmp_path_factory) -> Path:
    import torch

    path = tmp_path_factory.mktemp("ckpt") / "b4.pth"
    torch.save({"model": trained_like_b4_state_dict(), "epoch": 3}, path)
    return path


@pytest.fixture(scope="session")
def b4_bundle(tmp_path_factory, b4_checkpoint) -> Path:
    """One EfficientNet-B4 bundle (380x380) per test run, exported through the real CLI."""
    out = tmp_path_factory.mktemp("bundles") / "b4"
    proc = run_cli("export", str(b4_checkpoint), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def b4_model(b4_checkpoint):
    """The PyTorch model the bundle was exported from."""
    from hipcad.export.checkpoint import load_timm, read_state_dict

    return load_timm("efficientnet_b4", read_state_dict(b4_checkpoint))
