"""Shared fixtures. The expensive one, an exported EfficientNet-B4 bundle, is made once per run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import run_cli, trained_like_b4_state_dict


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
