"""``hipcad export``: a checkpoint (or a random initialisation) -> a checked model bundle."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hipcad.runtime.errors import HipcadError
from hipcad.runtime.model.files import sha256_file

DEFAULT_SIZES = {"efficientnet_b0": 224, "efficientnet_b1": 240, "efficientnet_b2": 260, "efficientnet_b3": 300,
                 "efficientnet_b4": 380, "efficientnet_b5": 456}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hipcad export",
        description="Turn a trained checkpoint into a model bundle: ONNX graph (uint8 grayscale in; logits and the "
        "Grad-CAM heatmap out, in one forward pass) + manifest.json + self-test data. The graph is checked with "
        "onnx.checker and against PyTorch with ONNX Runtime before the bundle is written.",
    )
    parser.add_argument("checkpoint", nargs="?", help="timm or efficientnet_pytorch EfficientNet state_dict, or a fastai "
                        "Learner.save file / torch.save'd dict holding one under 'model' or 'state_dict'")
    parser.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to write (replaced if present)")
    parser.add_argument("--arch", default="efficientnet_b4",
                        help="timm architecture (default: efficientnet_b4; efficientnet_pytorch weights go into its tf_ twin)")
    parser.add_argument("--input-size", type=int, metavar="PX", help="square input size (default: the architecture's, 380 for B4)")
    parser.add_argument("--random-init", action="store_true", help="no checkpoint: random weights (UNTRAINED, for tests and benchmarks)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --random-init (default 0)")
    parser.add_argument("--threshold", type=float, default=0.5, help="decision threshold on the fracture probability")
    parser.add_argument("--synthetic-demo", action="store_true", help="mark the weights as trained on synthetic phantoms")
    parser.add_argument("--no-torch", action="store_true",
                        help="leave out model.pt2 (the PyTorch program used by --backend torch and hipcad parity)")
    parser.add_argument("--intended-use", metavar="JSON_FILE",
                        help="intended-use keys over the paper's defaults (adult AP pelvis, CR/DX; see the README)")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    args = parser.parse_args(argv)
    if bool(args.checkpoint) == bool(args.random_init):
        parser.error("give a CHECKPOINT or --random-init (exactly one)")
    size = args.input_size or DEFAULT_SIZES.get(args.arch.removeprefix("tf_"), 380)

    from hipcad.export.checkpoint import import_checkpoint, random_init
    from hipcad.export.fused import fuse_timm
    from hipcad.export.layout_template import read_overrides
    from hipcad.export.onnx_export import export_bundle

    start = time.perf_counter()
    try:
        if args.random_init:
            fused, architecture, head = fuse_timm(random_init(args.arch, args.seed)), args.arch, "pool-linear"
            provenance = {"source": "random-init", "seed": args.seed}
        else:
            imported = import_checkpoint(args.checkpoint, args.arch)
            fused, architecture = imported.fused, imported.architecture
            head = "fastai-concat-pool" if imported.kind == "fastai" else "pool-linear"
            provenance = {"source": "checkpoint", "checkpoint": Path(args.checkpoint).name,
                          "checkpoint_sha256": sha256_file(Path(args.checkpoint)), "format": imported.kind,
                          "notes": imported.notes}
        provenance["command"] = "hipcad export " + " ".join(argv if argv is not None else sys.argv[2:])
        manifest = export_bundle(
            fused, args.out, architecture=architecture, input_hw=(size, size), provenance=provenance,
            trained=not args.random_init, synthetic_demo=args.synthetic_demo, threshold=args.threshold,
            with_torch=not args.no_torch, head=head, intended_use=read_overrides(args.intended_use),
        )
    except HipcadError as err:
        print(f"hipcad export: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        v = manifest["verification"]["onnxruntime_vs_torch"]
        print(f"wrote {args.out} ({args.arch}, {size}x{size}) in {time.perf_counter() - start:.1f} s; "
              f"ONNX Runtime vs PyTorch: max |logits diff| {v['max_abs_logits']:.1e}, max relative cam diff {v['max_rel_cam']:.1e}")
    return 0
