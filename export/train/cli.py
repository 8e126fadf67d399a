"""``hipcad train``: fine-tune an EfficientNet on hip halves cut the way the paper cut them.

Per radiograph of a dataset folder (``hipcad.runtime.evaluation.dataset``): the pelvic midline is found as
at inference; for a fractured image the vertical dividing line is moved, if needed, to keep a
50-pixel margin from the fracture box (the paper's cut), the half holding the box is a fracture
sample and the other half a no-fracture sample; an image without fracture gives two no-fracture
halves. Halves are resized to the model's input size as 8-bit grayscale, exactly as the runtime
does, and normalised by the same module that the exported graph contains.

Train / validation / test are split by patient. The epoch with the best validation AUC is kept
and exported as a bundle whose manifest carries the validation and test figures, the
calibration fitted on the validation split (the figures are on its scale) and the validation
halves' log-odds as the reference distribution for drift monitoring.
"""

from __future__ import annotations

import argparse
import os
import sys

from hipcad.export.train.loop import train
from hipcad.runtime.errors import HipcadError


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[2:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="hipcad train", description=__doc__.split("\n\n")[0] + " Writes a model bundle.")
    parser.add_argument("dataset", help="dataset folder (labels.csv + images; see `hipcad synth`)")
    parser.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to write")
    parser.add_argument("--arch", default="efficientnet_b4", help="timm EfficientNet (default efficientnet_b4, as the paper)")
    parser.add_argument("--input-size", type=int, default=380, metavar="PX", help="square input size (default 380)")
    parser.add_argument("--head", choices=("pool-linear", "fastai"), default="pool-linear",
                        help="classifier head: timm's avg-pool + linear, or fastai's cnn_learner concat-pool head")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one-cycle)")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--val", type=float, default=0.15, help="fraction of patients for validation")
    parser.add_argument("--test", type=float, default=0.15, help="fraction of patients for test")
    parser.add_argument("--box-supervision", type=float, metavar="W",
                        help="weight of the per-cell fracture-box loss on the last feature map (a training aid, "
                             "not exported; pool-linear head only; 0 = off; default 1 where the dataset has "
                             "fracture boxes and the head is pool-linear)")
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="processes decoding the dataset")
    parser.add_argument("--cache", metavar="DIR", help="keep the decoded halves here; a later run on the same files reuses them")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", metavar="CKPT", help="start from a timm state_dict (e.g. ImageNet weights) instead of random")
    parser.add_argument("--save-checkpoint", metavar="PATH", help="also save the best state_dict here")
    parser.add_argument("--calibration", choices=("temperature", "platt", "none"), default="temperature",
                        help="fit the probability calibration on the validation split: temperature scaling (default), "
                             "Platt scaling (temperature and bias), or none (the bundle then shows scores)")
    parser.add_argument("--synthetic-demo", action="store_true", help="label the bundle a synthetic demo (automatic for `hipcad synth` folders)")
    parser.add_argument("--no-torch", action="store_true", help="leave model.pt2 out of the bundle (smaller)")
    parser.add_argument("--intended-use", metavar="JSON_FILE",
                        help="intended-use keys over the paper's defaults (adult AP pelvis, CR/DX; see the README)")
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return train(args)
    except HipcadError as err:
        print(f"hipcad train: {err}", file=sys.stderr)
        return 1
