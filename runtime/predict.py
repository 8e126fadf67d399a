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


def _why_skipped(path: Path) -> str | None:
    """Why a file found in a folder is not read (None: it is read)."""
    from hipcad.runtime.imaging.sniff import HEAD_BYTES, not_an_image_hint, sniff

    if path.name.startswith("."):
        return "hidden file"
    if path.name.upper() == "DICOMDIR":
        return "DICOMDIR (the index of the folder's images, which are read themselves)"
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
    except OSError as err:
        return f"unreadable ({err.strerror or type(err).__name__})"
    if not head:
        return "empty file"
    return None if sniff(head) is not None else not_an_image_hint(head)


def expand_inputs(items: list[str], skipped: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Files as given (each is reported, readable or not); folders expanded to the radiographs
    inside them (sorted, recursive). Files in a folder that are not DICOM, JPEG or PNG (a dataset's
    labels.csv, a ZIP), a DICOMDIR (the index of the folder's images), hidden, empty and unreadable
    files are left out, and added to ``skipped`` as (path, reason) when a list is given."""
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            for q in sorted(q for q in p.rglob("*") if q.is_file()):
                reason = _why_skipped(q)
                if reason is None:
                    paths.append(q)
                elif skipped is not None:
                    skipped.append((q, reason))
        else:
            paths.append(p)
    return paths


def report_skipped(skipped: list[tuple[Path, str]], verbose: bool, stream=None) -> None:
    """One line on stderr with the count of files left out of folders, by reason; with ``verbose``,
    one line per file (its path as found on disk, never a value read from the file)."""
    stream = stream or sys.stderr
    if not skipped:
        return
    by_reason: dict[str, int] = {}
    for _, reason in skipped:
        key = reason.split(" (")[0].split(":")[0]
        by_reason[key] = by_reason.get(key, 0) + 1
    parts = ", ".join(f"{n} {reason}" for reason, n in sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])))
    print(f"note: {len(skipped)} file(s) in the folder(s) given were skipped: {parts}"
          + ("" if verbose else " (-v lists them)"), file=stream)
    if verbose:
        for path, reason in skipped:
            print(f"note: skipped {path}: {reason}", file=stream)


def safe_stem(path: Path) -> str:
    """A file-name-safe stem from the input's own file name (never from a DICOM value)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._") or "input"
    return stem[:80]


def main(argv: list[str] | None = None) -> int:
    from hipcad.runtime.backends import CHOICES, triton
    from hipcad.runtime.inference.overlay import HEATMAP_MODES

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
    parser.add_argument("--heatmap", choices=HEATMAP_MODES, default="suspected",
                        help="draw the heatmap on hips with a suspected fracture (default) or on all hips, as the paper did")
    parser.add_argument("--score-ineligible", action="store_true",
                        help="research only: also score images the model is not for (they stay \"eligible\": false)")
    parser.add_argument("--no-isolation", action="store_true",
                        help="decode in this process (debugging): a crashing or hanging codec then stops the command")
    parser.add_argument("--decode-timeout", type=_positive, default=30.0, metavar="S",
                        help="seconds a file may take to decode before it is refused (default 30)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    triton.add_arguments(parser)
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
    from hipcad.runtime.backends import open_backend, triton
    from hipcad.runtime.inference.overlay import OVERLAY_SUFFIX
    from hipcad.runtime.inference.pipeline import Pipeline
    from hipcad.runtime.model.bundle import load_bundle

    try:
        bundle = load_bundle(args.model)
        backend = open_backend(args.backend, bundle, **triton.options_from_args(args, args.backend))
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
    pipeline = Pipeline(bundle, backend, heatmap=args.heatmap, score_ineligible=args.score_ineligible, decoder=decoder)
    used: set[str] = set()
    all_ok = True
    skipped: list[tuple[Path, str]] = []
    paths = expand_inputs(args.inputs, skipped)
    report_skipped(skipped, args.verbose)
    with backend:
        for path in paths:
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
    sides = "  ".join(f"patient {s.side}: {s.words} ({s.score_words})" for s in result.sides)
    if result.eligible is False:
        reasons = result.eligibility.get("reasons", [])
        more = f" (and {len(reasons) - 1} more reason(s); see --json)" if len(reasons) > 1 else ""
        sides = f"NOT ASSESSED: {reasons[0] if reasons else 'not an image this model is for'}{more}" + (
            f"  [scored for research only] {sides}" if sides else "")
    text = f"{result.input}: {sides}  [{result.timings_ms['total']:.0f} ms]"
    if result.overlay:
        text += f"  overlay: {result.overlay}"
    for warning in result.warnings:
        text += f"\n  warning: {warning}"
    return text
