"""The decode path under fuzzing, in the suite: every recorded fault stays fixed (in the decoding
process, and in-process: fixed, not only contained), and a minute of fresh mutants through the
product's isolated decoder finds no unexpected exception, hang or death. ``make fuzz`` runs the
long version (100,000 mutants)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.fuzz import regress
from tests.helpers import REPO

CI_SECONDS = 60
CI_RUN_SEED = 20240601


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz") / "seeds"
    subprocess.run([sys.executable, "-m", "tests.fuzz.seeds", str(folder)], check=True, cwd=REPO, capture_output=True,
                   timeout=600)
    return folder


@pytest.mark.parametrize("decoder", ["pool", "inprocess"])
def test_every_recorded_fault_stays_fixed(seeds, decoder):
    lines: list[str] = []
    failed = regress.check(decoder, str(seeds), echo=lines.append)
    assert not failed, "\n".join(lines)


def test_a_minute_of_mutants_through_the_isolated_decoder(seeds, tmp_path):
    out = tmp_path / "run"
    code = subprocess.run([sys.executable, "-m", "tests.fuzz.harness", "--seeds", str(seeds), "--out", str(out),
                           "--count", "1000000", "--run-seed", str(CI_RUN_SEED), "--max-seconds", str(CI_SECONDS),
                           "--timeout", "10", "--quiet"], cwd=REPO, capture_output=True, timeout=CI_SECONDS + 300).returncode
    summary = json.loads((out / "summary.json").read_text())
    findings = (out / "findings.jsonl").read_text()
    assert code == 0 and summary["failures"] == 0, findings[-3000:]
    assert summary["count"] >= 500, summary  # it did run
    assert summary["counts"].get("ok", 0) and summary["counts"].get("rejected", 0)
