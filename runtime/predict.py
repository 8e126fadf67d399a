"""``hipcad predict``: read radiographs from the command line, one verdict per hip, overlays and
one JSON line per input (``--json``)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from hipcad.runtime.errors import HipcadError
from hipcad.runtime.logs import command_logging


def expand_inputs(items: list[str]) -> list[Path]:
    """Files as given (each is reported, readable or not); folders expanded to the radiographs
    inside them (sorted, recursive; files that are not DICOM, JPEG or PNG, such as a dataset's
    labels.csv, are left out)."""
    from hipcad.runtime.imaging.decode import sniff

    def is_image(path: Path) -> bool:
        try:
            with open(path, "rb") as fh:
                return sniff(fh.read(132)) is not None
        except OSError:
            return False

    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths.extend(sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".") and is_image(q)))
        else:
            paths.append(p)
    return paths


def safe_stem(path: Path) -> str:
    """A file-name-safe stem from the input's own file name (never from a DICOM value)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._") or "input"
    return stem[:80]


def main(argv: list[str] | None = None) -> int:
    from hipcad.runtime.backends import CHOICES

    parser = argparse.ArgumentParser(
        prog="hipcad predict",
        description="Read AP pelvis radiographs (DICOM, JPEG, PNG): fracture probability and verdict per hip, "
        "Grad-CAM heatmap overlay, per-stage timings. Exit status 0 when every input was read, 1 otherwise.",
    )
    parser.add_argument("inputs", nargs="+", metavar="FILE", help="radiograph files or folders")
    parser.add_argument("--model", metavar="BUNDLE", help="model bundle folder (default: the bundled demo model)")
    parser.add_argument("--out", metavar="DIR", help="write overlays (JPEG) and result JSON files here")
    parser.add_argument("--json", action="store_true", help="print one JSON object per input")
    parser.add_argument("--backend", default="auto", choices=CHOICES, help="inference backend (default: auto)")
    parser.add_argument("--no-isolation", action="store_true",
                        help="decode in this process (debugging): a crashing or hanging codec then stops the command")
    parser.add_argument("--decode-timeout", type=_positive, default=30.0, metavar="S",
                        help="seconds a file may take to decode before it is refused (default 30)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = parser.parse_args(argv)
    command_logging(args.verbose)
    decoder = _decoder(args)
    try:
        return _predict(args, decoder)
    finally:
        decoder.close()


WARM = "images"  # what the decoding process imports while the model loads (see DecodePool)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _decoder(args):
    """Files are decoded in a separate process (started now, while the model loads), so that a
    codec's crash or hang costs that file only."""
    from hipcad.runtime.imaging.isolation import DecodePool, InProcessDecoder, IsolationLimits

    if args.no_isolation:
        return InProcessDecoder()
    pool = DecodePool(1, IsolationLimits(timeout_s=args.decode_timeout), warm=WARM, fork=True)
    pool.start(wait=False)
    return pool


def _predict(args, decoder) -> int:
    from hipcad.runtime.backends import open_backend
    from hipcad.runtime.inference.overlay import OVERLAY_SUFFIX
    from hipcad.runtime.inference.pipeline import Pipeline
    from hipcad.runtime.model.bundle import load_bundle

    try:
        bundle = load_bundle(args.model)
        backend = open_backend(args.backend, bundle)
    except HipcadError as err:
        print(f"hipcad predict: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    print(f"model: {bundle.label}; operating point: {bundle.operating_point} (threshold {bundle.threshold:g}); "
          f"backend: {backend.name} ({backend.device})", file=sys.stderr)
    if backend.fallback_reason:
        print(f"note: {backend.fallback_reason}", file=sys.stderr)
    pipeline = Pipeline(bundle, backend, decoder=decoder)
    used: set[str] = set()
    all_ok = True
    with backend:
        for path in expand_inputs(args.inputs):
            overlay = None
            if out:
                stem = safe_stem(path)
                base, n = stem, 2
                while stem in used:
                    stem, n = f"{base}-{n}", n + 1
                used.add(stem)
                overlay = out / f"{stem}.overlay{OVERLAY_SUFFIX}"
            result = pipeline.run(path, overlay)
            all_ok &= result.ok
            record = result.to_json()
            if out:
                (out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            if args.json:
                print(json.dumps(record), flush=True)
            else:
                print(_human(result), flush=True)
    return 0 if all_ok else 1


def _human(result) -> str:
    if not result.ok:
        return f"{result.input}: ERROR {result.error}"
    sides = "  ".join(
        f"patient {s.side}: {s.words} (p={s.probability:.3f})"
        for s in result.sides
    )
    text = f"{result.input}: {sides}  [{result.timings_ms['total']:.0f} ms]"
    if result.overlay:
        text += f"  overlay: {result.overlay}"
    for warning in result.warnings:
        text += f"\n  warning: {warning}"
    return text
