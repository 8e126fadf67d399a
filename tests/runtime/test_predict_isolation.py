"""``hipcad predict`` decodes in a separate process: a file that kills its codec costs that file."""

from __future__ import annotations

import json

from PIL import Image

from tests.fuzz import cases
from tests.helpers import phantom, run_cli

SEED = 52611  # a phantom seed used nowhere else (an AP pelvis the model is for: eligible, scored)


def test_a_codec_panic_costs_one_file_and_the_next_is_read(tmp_path):
    """Issue 18's reproducer (a valid RLE image with Rows set below its data: pylibjpeg-rle panics
    with a BaseException) and a valid radiograph in one run: two JSON lines, no traceback."""
    panic = cases.make_rle_panic(tmp_path / "rle_rows_below_data.dcm")
    good = tmp_path / "good.png"
    Image.fromarray(phantom(SEED, 0, size=(800, 640))[0]).save(good)
    for extra in ([], ["--no-isolation"]):
        proc = run_cli("predict", str(panic), str(good), "--json", "--backend", "onnxruntime", *extra, timeout=300)
        assert "Traceback" not in proc.stdout + proc.stderr, extra
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [r["input"] for r in lines] == [str(panic), str(good)], extra
        assert lines[0]["ok"] is False and "PanicException" in lines[0]["error"]
        assert lines[0]["error"].startswith("cannot decode RLE Lossless pixel data: the decoder failed")
        assert lines[1]["ok"] is True and len(lines[1]["sides"]) == 2
        assert proc.returncode == 1


def test_a_hanging_file_is_refused_at_the_decode_timeout(tmp_path):
    """A file whose decoding does not end in time is refused with the reason; the next is read."""
    bomb = cases.make_deflate_bomb(tmp_path / "bomb.dcm", size_mb=700)  # over the 512 MiB limit
    good = tmp_path / "good.png"
    Image.fromarray(phantom(SEED, 0, size=(800, 640))[0]).save(good)
    proc = run_cli("predict", str(bomb), str(good), "--json", "--backend", "onnxruntime", "--decode-timeout", "1",
                   timeout=300)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[0]["ok"] is False and lines[1]["ok"] is True
    # inflating 512 MiB to refuse the bomb takes seconds: here the 1-s timeout stops it first
    assert "decoding took longer than 1 s" in lines[0]["error"] or "inflates to over" in lines[0]["error"]
    assert "Traceback" not in proc.stderr
