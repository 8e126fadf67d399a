"""``hipcad synth``: write a folder of phantoms with ``labels.csv`` (in parallel, reproducible by seed)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from hipcad.runtime.evaluation.dataset import ImageRecord
from hipcad.runtime.evaluation.labels_write import write_labels
from hipcad.runtime.synth.formats import FORMATS, FRACTURE_KINDS, SYNTHETIC_NOTE, parse_formats
from hipcad.runtime.synth.render import make_phantom
from hipcad.runtime.synth.writer import save_preview, write_phantom


def _make_one(job: tuple) -> tuple[ImageRecord, dict]:
    out_dir, seed, index, kwargs = job
    t0 = time.perf_counter()
    ph = make_phantom(seed, index, **kwargs)
    t1 = time.perf_counter()
    rec = write_phantom(ph, out_dir)
    t2 = time.perf_counter()
    fx = ph.fracture
    info = {
        "file": rec.file,
        "index": index,
        "format": ph.vendor["format"],
        "transfer_syntax": FORMATS[ph.vendor["format"]][0],
        "width": ph.spec.width,
        "height": ph.spec.height,
        "spacing_mm": round(ph.spec.spacing, 5),
        "bits": ph.vendor["bits"],
        "photometric": "MONOCHROME1" if ph.vendor["mono1"] else "MONOCHROME2",
        "mirrored": bool(ph.vendor["mirrored"] and ph.vendor["format"].startswith("dcm-")),
        "fracture": None if fx is None else {
            "side": fx.side, "kind": fx.kind, "subtlety": round(fx.subtlety, 3), "displaced": fx.params["displaced"],
        },
        "render_s": round(t1 - t0, 4),
        "write_s": round(t2 - t1, 4),
    }
    return rec, info


def generate(
    out_dir: str | os.PathLike,
    count: int,
    seed: int = 0,
    *,
    size: tuple[int, int] | None = None,
    formats: str | list | dict | None = None,
    fracture_rate: float = 0.5,
    mirror_rate: float = 0.1,
    subtlety: dict[str, tuple[float, float]] | None = None,
    start: int = 0,
    jobs: int = 1,
    progress: bool | None = None,
) -> list[ImageRecord]:
    """Write ``count`` phantoms (indices ``start`` ...) plus labels.csv, regions.csv and synth.json.

    Image ``i`` depends only on (seed, i, size, formats, fracture_rate, mirror_rate, subtlety), not
    on ``count`` or ``jobs``. labels.csv carries the attributes ``vendor``, ``fracture_type`` and
    ``displaced`` (:func:`hipcad.runtime.synth.writer.attributes`).
    """
    import json

    if count < 0:
        raise ValueError("count must be >= 0")
    if not 0.0 <= fracture_rate <= 1.0:
        raise ValueError("fracture_rate must be between 0 and 1")
    if not 0.0 <= mirror_rate <= 1.0:
        raise ValueError("mirror_rate must be between 0 and 1")
    weights = parse_formats(formats)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = dict(size=size, fracture_rate=fracture_rate, formats=weights, mirror_rate=mirror_rate, subtlety=subtlety)
    jobs_list = [(out_dir, seed, start + i, kwargs) for i in range(count)]
    show = sys.stderr.isatty() if progress is None else progress
    from tqdm import tqdm

    bar = tqdm(total=count, disable=not show, file=sys.stderr, unit="img", desc="synth")
    results: list[tuple[ImageRecord, dict]] = []
    try:
        if jobs > 1 and count > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=jobs) as pool:
                for res in pool.map(_make_one, jobs_list, chunksize=1):
                    results.append(res)
                    bar.update(1)
        else:
            for job in jobs_list:
                results.append(_make_one(job))
                bar.update(1)
    finally:
        bar.close()
    records = [r for r, _ in results]
    write_labels(out_dir, records)
    manifest = {
        "generator": "hipcad synth",
        "note": SYNTHETIC_NOTE,
        "seed": seed,
        "start": start,
        "count": count,
        "size": list(size) if size else None,
        "formats": weights,
        "fracture_rate": fracture_rate,
        "mirror_rate": mirror_rate,
        "subtlety": {k: list(v) for k, v in subtlety.items()} if subtlety else None,
        "images": [info for _, info in results],
    }
    (out_dir / "synth.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return records


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().replace("×", "x").split("x")
        size = (int(w), int(h))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 2000x1640, not {text!r}") from None
    if min(size) < 64 or max(size) > 16384:
        raise argparse.ArgumentTypeError(f"size {text} is out of range (64 to 16384 pixels a side)")
    return size


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _subtlety(text: str) -> tuple[str, tuple[float, float]]:
    kind, _, span = text.partition("=")
    lo, _, hi = span.partition("-")
    try:
        value = (kind.strip(), (float(lo), float(hi)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--subtlety takes KIND=LO-HI, e.g. trochanteric=0.7-1, not {text!r}") from None
    if value[0] not in FRACTURE_KINDS:
        raise argparse.ArgumentTypeError(f"unknown fracture kind {value[0]!r}; known: {', '.join(FRACTURE_KINDS)}")
    if not 0.0 <= value[1][0] <= value[1][1] <= 1.0:
        raise argparse.ArgumentTypeError(f"the subtlety range of {text!r} must lie within 0-1, low first")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hipcad synth",
        description="Write synthetic AP pelvis radiographs (phantoms, not patients) with hip-fracture labels "
        "in the hipcad dataset format (labels.csv, regions.csv).",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    p.add_argument("--count", type=int, default=20, metavar="N", help="number of images (default 20)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed; same seed, same images (default 0)")
    p.add_argument("--start", type=int, default=0, metavar="I", help="index of the first image (default 0)")
    p.add_argument("--size", type=_parse_size, default=None, metavar="WxH",
                   help="exact image size, e.g. 4892x4020 (default: random width 1400-2400, film aspect ratios)")
    p.add_argument("--formats", default=None, metavar="LIST",
                   help="comma-separated output formats: dicom (all DICOM syntaxes), dcm-explicit, dcm-rle, "
                   "dcm-jpegls, dcm-j2k, dcm-jpeg, jpeg, png (default: about 70%% DICOM, 30%% JPEG)")
    p.add_argument("--fracture-rate", type=_rate, default=0.5, metavar="P",
                   help="share of images with one hip fracture (default 0.5)")
    p.add_argument("--mirror-rate", type=_rate, default=0.1, metavar="P",
                   help="share of DICOM files stored mirrored, PatientOrientation R\\F (default 0.1)")
    p.add_argument("--subtlety", type=_subtlety, action="append", default=[], metavar="KIND=LO-HI",
                   help="draw the subtlety of one fracture kind from this range (0 obvious ... 1 barely visible; "
                   "default 0-1), e.g. trochanteric=0.7-1 plants a harder kind; repeatable")
    p.add_argument("--jobs", type=int, default=1, metavar="J", help="worker processes (default 1)")
    p.add_argument("--preview", metavar="PNG", help="also write a downscaled preview of the first fractured phantom")
    p.add_argument("--force", action="store_true", help="write into a folder that already holds a labels.csv")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def main(argv: list[str] | None = None) -> int:
    """``hipcad synth``: returns 0 on success, 1 on an error it reports."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.count < 0 or args.start < 0 or args.jobs < 1:
        print("hipcad synth: --count and --start must be >= 0 and --jobs >= 1", file=sys.stderr)
        return 1
    try:
        formats = parse_formats(args.formats)
    except ValueError as err:
        print(f"hipcad synth: {err}", file=sys.stderr)
        return 1
    if out.exists() and not out.is_dir():
        print(f"hipcad synth: {out} exists and is not a folder", file=sys.stderr)
        return 1
    if (out / "labels.csv").exists() and not args.force:
        print(f"hipcad synth: {out} already holds a labels.csv; use --force to overwrite it", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    try:
        records = generate(out, args.count, args.seed, size=args.size, formats=formats,
                           fracture_rate=args.fracture_rate, mirror_rate=args.mirror_rate,
                           subtlety=dict(args.subtlety) or None, start=args.start,
                           jobs=args.jobs, progress=None if not args.quiet else False)
    except OSError as err:
        print(f"hipcad synth: cannot write to {out}: {err}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - t0
    if args.preview:
        for rec in records:
            if rec.fractured:
                idx = int(Path(rec.file).stem.split("_")[-1])
                save_preview(make_phantom(args.seed, idx, size=args.size, fracture_rate=args.fracture_rate,
                                          formats=formats, mirror_rate=args.mirror_rate,
                                          subtlety=dict(args.subtlety) or None), args.preview)
                break
    if not args.quiet:
        import json

        info = json.loads((out / "synth.json").read_text(encoding="utf-8"))["images"]
        n = len(records)
        fx = [i["fracture"] for i in info if i["fracture"]]
        kinds = {k: sum(f["kind"] == k for f in fx) for k in FRACTURE_KINDS}
        sides = {s: sum(f["side"] == s for f in fx) for s in ("right", "left")}
        fmts: dict[str, int] = {}
        for i in info:
            fmts[i["format"]] = fmts.get(i["format"], 0) + 1
        print(f"wrote {n} synthetic phantoms to {out} in {elapsed:.1f} s ({elapsed / max(n, 1):.2f} s/image)")
        print(f"  fractured: {len(fx)} ({', '.join(f'{k} {v}' for k, v in kinds.items())}; "
              f"right {sides['right']}, left {sides['left']}), no fracture: {n - len(fx)}")
        print(f"  formats: {', '.join(f'{k} {v}' for k, v in sorted(fmts.items()))}; "
              f"mirrored (R\\F): {sum(i['mirrored'] for i in info)}")
        print(f"  labels: {out / 'labels.csv'}, regions: {out / 'regions.csv'}")
        if args.preview:
            print(f"  preview: {args.preview}")
    return 0


