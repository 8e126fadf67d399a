"""``hipcad predict`` writing into a pipe whose reader goes away (``hipcad predict ... | head -1``):
the command stops quietly (runtime/cli.py catches BrokenPipeError), no traceback on stderr."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import phantom

SEED = 51505  # used by no other test
INPUTS = 12  # the same radiograph many times: lines keep coming after the reader has gone
HIPCAD = Path(sys.executable).with_name("hipcad")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[str]:
    path = tmp_path_factory.mktemp("pipes") / "pelvis.jpg"
    Image.fromarray(phantom(SEED, 0, size=(640, 480))[0]).save(path, quality=95)
    return [str(path)] * INPUTS


def quiet(stderr: str) -> None:
    assert "model: " in stderr  # the command did start and load its model
    for words in ("Traceback", "BrokenPipeError", "Exception ignored", "Broken pipe"):
        assert words not in stderr, stderr


@pytest.mark.parametrize("as_json", [True, False])
def test_a_reader_that_closes_the_pipe_after_one_line(inputs, as_json):
    args = [str(HIPCAD), "predict", *inputs, "--backend", "onnxruntime"] + (["--json"] if as_json else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        proc.stdout.close()  # the reader goes away while results are still coming
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if as_json:
        record = json.loads(first)
        assert record["ok"] is True and record["input"] == inputs[0]
    else:
        assert first.startswith(f"{inputs[0]}: patient right: ")
    # 1: not every input was reported (runtime/cli.py); not a crash (a signal, or Python's 120)
    assert proc.returncode == 1, stderr
    quiet(stderr)


def test_head_minus_one_in_a_shell(inputs):
    command = f"set -o pipefail; {shlex.quote(str(HIPCAD))} predict --json --backend onnxruntime " \
              f"{' '.join(map(shlex.quote, inputs))} | head -1"
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["ok"] is True
    assert proc.returncode == 1, proc.stderr  # pipefail: hipcad's own status
    quiet(proc.stderr)


def test_a_reader_that_keeps_reading_gets_every_line(inputs):
    """The control: the same command with a reader that stays gets every line and status 0."""
    proc = subprocess.run([str(HIPCAD), "predict", "--json", "--backend", "onnxruntime", *inputs[:3]],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["ok"] for line in proc.stdout.splitlines()] == [True] * 3
