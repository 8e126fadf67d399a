"""Coverage-guided fuzzing of the decoder with atheris (libFuzzer for Python): ``make fuzz-atheris``.

    python -m tests.fuzz.atheris_target [libFuzzer flags] CORPUS_DIR [SEED_DIR]
    e.g. python -m tests.fuzz.atheris_target -max_total_time=600 -timeout=5 -rss_limit_mb=3072 \\
             -max_len=65536 -artifact_prefix=.cache/fuzz/atheris/ .cache/fuzz/atheris/corpus .cache/fuzz/seeds

hipcad and pydicom (Python) are instrumented for coverage; the codecs (C, C++, Rust) are reached
but not instrumented. The input (its last byte chooses the decode size) is decoded in this process,
so libFuzzer sees what isolation would hide: a HipcadError is the expected refusal, anything else a
crash (crash-*), -timeout a hang (timeout-*), -rss_limit_mb a runaway allocation (oom-*). Each
unexpected input is also kept as unexpected-*.bin with its traceback (libFuzzer's own artifact can
be lost when the process dies in C code). Needs ``pip install 'hipcad[fuzz]'`` (atheris).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import traceback
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["hipcad", "pydicom"]):
    import pydicom.pixels  # noqa: F401

    from hipcad.runtime.errors import HipcadError
    from hipcad.runtime.imaging import dicom  # noqa: F401
    from hipcad.runtime.imaging.isolation import InProcessDecoder

DECODER = InProcessDecoder()
PATH = os.path.join(tempfile.gettempdir(), f"hipcad-atheris-{os.getpid()}.bin")
ARTIFACTS = Path(os.environ.get("HIPCAD_FUZZ_ARTIFACTS", ".cache/fuzz/atheris"))


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    with open(PATH, "wb") as fh:
        fh.write(data[:-1])
    try:
        DECODER.decode(PATH, min_side=(None, 16, 32)[data[-1] % 3])
    except HipcadError:
        return
    except BaseException as err:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = ARTIFACTS / f"unexpected-{hashlib.sha1(data).hexdigest()[:16]}"
        name.with_suffix(".bin").write_bytes(data)
        name.with_suffix(".txt").write_text("".join(traceback.format_exception(err)))
        raise


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    try:
        atheris.Fuzz()
    finally:
        if os.path.exists(PATH):
            os.unlink(PATH)


if __name__ == "__main__":
    main()
