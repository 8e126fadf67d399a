"""``hipcad train``: fine-tune an EfficientNet on hip halves cut the way the paper cut them.

Per radiograph of a dataset folder (``hipcad.runtime.evaluation.dataset``): the pelvic midline is found as
at inference; for a fractured image the vertical dividing line is moved, if needed, to keep a
50-pixel margin from the fracture box (the paper's cut), the half holding the box is a fracture
sample and the other half a no-fracture sample; an image without fracture gives two no-fracture
halves. Halves are resized to the model's input size as 8-bit grayscale, exactly as the runtime
does, and normalised by the same module that the exported graph contains.

Train / validation / test are split by patient. The epoch with the best validation AUC is kept
and exported as a bundle whose manifest carries the validation and test figures.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hipcad.runtime.evaluation.dataset import Dataset, ImageRecord, load_dataset, split_by_patient
from hipcad.runtime.imaging.decode import decode
from hipcad.runtime.errors import HipcadError
from hipcad.runtime.evaluation.stats import binary_metrics
from hipcad.runtime.inference.pipeline import min_decode_side
from hipcad.runtime.inference.preprocess import find_midline, image_left_side, resize_gray

from hipcad.export.checkpoint import create_timm, read_state_dict
from hipcad.export.fused import FusedCAMModel, GrayToNormalized, TimmFeatures, fuse_timm
from hipcad.export.heads import FastaiHeadCAM, fastai_head

MARGIN_PX = 50  # the paper's margin between the dividing line and the fracture box, stored pixels


@dataclass
class Halves:
    images: np.ndarray  # uint8 [M, 1, H, W]
    labels: np.ndarray  # int64 [M]
    sources: list[str]  # "file:side" per half
    boxes: np.ndarray  # float32 [M, 4]: the fracture box in input pixels (x0, y0, x1, y1); NaN where none


def dividing_line(cols: int, midline: int, box_x: tuple[float, float] | None, box_on_image_left: bool, margin: float) -> int:
    """The cut column: the midline, moved away from the fracture box to keep ``margin`` pixels."""
    cut = midline
    if box_x is not None:
        x0, x1 = box_x
        cut = max(cut, math.ceil(x1 + margin)) if box_on_image_left else min(cut, math.floor(x0 - margin))
    return int(min(max(cut, 1), cols - 1))


def cut_record(record: ImageRecord, input_hw: tuple[int, int]) -> list[tuple[np.ndarray, int, str, tuple | None]]:
    """The two labelled halves of one radiograph, cut as the paper did, each with its fracture
    box mapped to input pixels (None where the half has no fracture or the box is unknown)."""
    # decoded exactly as the runtime pipeline decodes (the same reduced-size decoding)
    radiograph = decode(record.path, min_side=min_decode_side(input_hw))
    pixels, scale = radiograph.pixels, radiograph.scale
    cols = pixels.shape[1]
    left_is, _ = image_left_side(radiograph.metadata.get("patient_orientation"))
    fractured = record.fractured_sides
    if len(fractured) > 1:
        # both hips fractured: no dividing line can separate them; cut at the midline
        box_x, on_left = None, True
    elif fractured and record.sides[fractured[0]].box is not None:
        box = record.sides[fractured[0]].box
        box_x, on_left = (box.x0 * scale, box.x1 * scale), fractured[0] == left_is
    else:
        box_x, on_left = None, True
    cut = dividing_line(cols, find_midline(pixels), box_x, on_left, MARGIN_PX * scale)
    right_is = "left" if left_is == "right" else "right"
    spans = {left_is: (0, cut), right_is: (cut, cols)}
    h, w = input_hw
    rows = pixels.shape[0]
    out = []
    for side in ("right", "left"):
        x0, x1 = spans[side]
        label = record.sides[side]
        box = None
        if label.fracture and label.box is not None:
            sx, sy = w / (x1 - x0), h / rows
            b = label.box
            box = ((b.x0 * scale - x0) * sx, b.y0 * scale * sy, (b.x1 * scale - x0) * sx, b.y1 * scale * sy)
        out.append((resize_gray(pixels[:, x0:x1], input_hw), int(label.fracture), f"{record.file}:{side}", box))
    return out


def _cut_or_skip(args: tuple[ImageRecord, tuple[int, int]]):
    record, input_hw = args
    try:
        return cut_record(record, input_hw), None
    except HipcadError as err:
        return None, f"skipped {record.file}: {err}"


def load_halves(records: list[ImageRecord], input_hw: tuple[int, int], desc: str, jobs: int = 1) -> Halves:
    """Decode and cut ``records`` (in ``jobs`` processes), keeping their order."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    images, labels, sources, boxes = [], [], [], []
    work = [(record, input_hw) for record in records]
    pool = ProcessPoolExecutor(jobs) if jobs > 1 and len(work) > 1 else None
    done = False
    try:
        results = pool.map(_cut_or_skip, work, chunksize=8) if pool else map(_cut_or_skip, work)
        for halves, skipped in tqdm(results, total=len(work), desc=f"reading {desc}", unit="image", file=sys.stderr,
                                    disable=None if records else True):
            if skipped:
                print(skipped, file=sys.stderr)
                continue
            for image, label, source, box in halves:
                images.append(image)
                labels.append(label)
                sources.append(source)
                boxes.append(box if box is not None else (np.nan,) * 4)
        done = True
    finally:
        if pool:
            pool.shutdown(cancel_futures=not done)  # Ctrl-C or an error: do not decode the rest
    h, w = input_hw
    array = np.stack(images)[:, None] if images else np.zeros((0, 1, h, w), np.uint8)
    return Halves(array, np.asarray(labels, dtype=np.int64), sources, np.asarray(boxes, dtype=np.float32).reshape(-1, 4))


CUT_VERSION = 3  # bump when cut_record (or the decoding it uses) changes what it returns


def cached_halves(records: list[ImageRecord], input_hw: tuple[int, int], desc: str, jobs: int, cache: str | None) -> Halves:
    """``load_halves``, kept in ``cache`` (an .npz per split) keyed by the files' names, sizes and
    modification times, the input size and the cut: a second training run on the same dataset
    skips decoding."""
    if not cache:
        return load_halves(records, input_hw, desc, jobs)
    import hashlib

    def identity(path: Path) -> tuple:
        try:
            st = path.stat()
            return st.st_size, st.st_mtime_ns
        except OSError:  # unreadable: load_halves skips it and says so
            return None, None

    key = hashlib.sha256(repr((CUT_VERSION, tuple(input_hw), [
        (str(r.path.resolve()), *identity(r.path), sorted((k, repr(v)) for k, v in r.sides.items()))
        for r in records])).encode()).hexdigest()[:20]
    path = Path(cache) / f"halves-{desc}-{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            print(f"reading {desc}: {len(z['labels'])} halves from {path}", file=sys.stderr)
            return Halves(z["images"], z["labels"], [str(x) for x in z["sources"]], z["boxes"])
    halves = load_halves(records, input_hw, desc, jobs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}-{os.getpid()}.tmp.npz")
    np.savez(tmp, images=halves.images, labels=halves.labels, sources=np.asarray(halves.sources), boxes=halves.boxes)
    os.replace(tmp, path)
    return halves


def box_masks(boxes: np.ndarray, input_hw: tuple[int, int]) -> torch.Tensor:
    """float [M, 1, H, W]: 1 inside each fracture box, 0 elsewhere (all 0 where the box is NaN)."""
    h, w = input_hw
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1) + 0.5
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w) + 0.5
    b = torch.from_numpy(np.nan_to_num(boxes, nan=-1.0))
    inside = (xs >= b[:, 0, None, None]) & (xs <= b[:, 2, None, None]) & (ys >= b[:, 1, None, None]) & (ys <= b[:, 3, None, None])
    return inside.float().unsqueeze(1)


def augment(x: torch.Tensor, generator: torch.Generator, masks: torch.Tensor | None = None):
    """Random flip, small affine (scale, shift, rotation), contrast/brightness/gamma: on 0..255 floats.

    With ``masks`` ([N, 1, H, W]) the same geometric transform is applied to them and
    ``(images, masks)`` is returned."""
    n = x.shape[0]
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    flip = torch.where(rand(n) < 0.5, -1.0, 1.0)
    angle = (rand(n) - 0.5) * math.radians(8)
    scale = 1.0 + (rand(n) - 0.5) * 0.14
    shift = (rand(n, 2) - 0.5) * 0.10
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if masks is not None:
        masks = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = x / 255.0
    gamma = torch.exp((rand(n, 1, 1, 1) - 0.5) * 0.5)
    x = x.clamp(0, 1) ** gamma
    contrast = 1.0 + (rand(n, 1, 1, 1) - 0.5) * 0.4
    brightness = (rand(n, 1, 1, 1) - 0.5) * 0.16
    mean = x.mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean + brightness).clamp(0, 1)
    return x * 255.0 if masks is None else (x * 255.0, masks)


class Classifier(nn.Module):
    """uint8-range floats -> logits, with the same normalisation the exported graph applies."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.preprocess = GrayToNormalized()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))


def _feature_hw(model: nn.Module, size: int) -> tuple[int, int]:
    was_training = model.training
    model.eval()  # a probe must not move BatchNorm statistics
    try:
        with torch.no_grad():
            return tuple(model.forward_features(torch.zeros(1, 3, size, size)).shape[-2:])
    finally:
        model.train(was_training)


def _negatives_per_positive(boxes: np.ndarray, input_hw: tuple[int, int], cells_hw, chunk: int = 256) -> float:
    """Negative / positive feature-map cells over the training halves (the BCE's pos_weight);
    halves without a box are all negative, the others are rasterised a chunk at a time."""
    boxed = boxes[np.isfinite(boxes).all(axis=1)]
    per_half = int(np.prod(cells_hw))
    positives = sum(float(_cell_targets(box_masks(boxed[i : i + chunk], input_hw), cells_hw).sum())
                    for i in range(0, len(boxed), chunk))
    return (len(boxes) * per_half - positives) / max(positives, 1.0)


def _cell_targets(masks: torch.Tensor, hw) -> torch.Tensor:
    """1 for feature-map cells at least 15 % covered by a fracture box, else 0."""
    return (F.adaptive_avg_pool2d(masks, tuple(hw)) >= 0.15).float()


def predict_probs(classifier: Classifier, images: np.ndarray, batch: int = 64) -> np.ndarray:
    classifier.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i : i + batch]).float().contiguous(memory_format=torch.channels_last)
            out.append(torch.softmax(classifier(x), dim=1)[:, 1].numpy())
    return np.concatenate(out) if out else np.zeros(0)


def train(args) -> int:
    from tqdm import tqdm

    from hipcad.export.onnx_export import export_bundle

    torch.manual_seed(args.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    size = args.input_size
    data: Dataset = load_dataset(args.dataset)
    train_recs, val_recs, test_recs = split_by_patient(data, (1 - args.val - args.test, args.val, args.test), seed=args.seed)
    print(f"dataset {args.dataset}: {len(data)} radiographs; split by patient: train {len(train_recs)}, "
          f"validation {len(val_recs)}, test {len(test_recs)}", file=sys.stderr)
    tr, va, te = (cached_halves(recs, (size, size), desc, args.jobs, args.cache)
                  for recs, desc in ((train_recs, "train"), (val_recs, "validation"), (test_recs, "test")))
    if len(tr.labels) == 0 or len(va.labels) == 0 or len(set(va.labels.tolist())) < 2:
        raise HipcadError("the training and validation sets need halves of both classes; the dataset is too small")

    if args.init is None:
        model = create_timm(args.arch)
        # timm scales the classifier's init by 1/sqrt(classes): with 2 classes the first logits
        # are in the tens and the first epochs are spent undoing that
        nn.init.normal_(model.classifier.weight, std=0.01)
        nn.init.zeros_(model.classifier.bias)
    else:
        from hipcad.export.checkpoint import load_timm

        model = load_timm(args.arch, read_state_dict(args.init))
    # head "pool-linear": timm's avg-pool + linear; "fastai": fastai's cnn_learner head (concat
    # max + avg pool, BN, dropout, linear, ReLU, BN, dropout, linear), as the paper's fastai 1.0 had
    head = fastai_head(model.num_features) if args.head == "fastai" else None
    network = model if head is None else nn.Sequential(TimmFeatures(model), head)
    classifier = Classifier(network).to(memory_format=torch.channels_last)
    # box supervision: 1x1 convolutions on the last feature map (the Grad-CAM layer) and on a middle
    # block are taught, cell by cell, where the fracture boxes are. A training aid, not exported;
    # the dense signal teaches the features what a fracture looks like far sooner than one label
    # per half, and ties the heatmap to the fracture
    aux = None
    if args.box_supervision is None:  # default: on where it can be
        args.box_supervision = 1.0 if head is None and np.isfinite(tr.boxes).any() else 0.0
    if args.box_supervision > 0:
        if head is not None:
            raise HipcadError("--box-supervision needs --head pool-linear")
        if not np.isfinite(tr.boxes).any():
            raise HipcadError("--box-supervision needs fracture boxes in labels.csv (use --box-supervision 0)")
        # a second one on a middle block (stride 16), where a thin fracture line is still a local feature
        captured: dict[str, torch.Tensor] = {}
        hook = model.blocks[len(model.blocks) // 2].register_forward_hook(lambda m, i, o: captured.__setitem__("mid", o))
        final_hw = _feature_hw(model, size)
        aux = nn.ModuleList([nn.Conv2d(model.num_features, 1, 1), nn.Conv2d(captured["mid"].shape[1], 1, 1)])
        aux = aux.to(memory_format=torch.channels_last)
        pos_weight = torch.tensor(_negatives_per_positive(tr.boxes, (size, size), final_hw))
    params = list(classifier.parameters()) + (list(aux.parameters()) if aux is not None else [])
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(len(tr.labels) / args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.15)
    generator = torch.Generator().manual_seed(args.seed)
    # classes weighted by inverse frequency: most halves are intact, and a model that calls every
    # half intact must not look good to the loss (the paper's halves were balanced 1:1)
    counts = np.bincount(tr.labels, minlength=2).astype(np.float64)
    class_weight = torch.tensor(counts.sum() / (2.0 * np.maximum(counts, 1.0)), dtype=torch.float32)
    best = {"auc": -1.0, "loss": math.inf, "epoch": 0, "state": None}
    history = []
    start = time.time()
    for epoch in range(1, args.epochs + 1):
        classifier.train()
        order = torch.randperm(len(tr.labels), generator=generator)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{args.epochs}", file=sys.stderr, unit="batch", disable=None)
        seen = correct = 0
        total_loss = 0.0
        for step in bar:
            idx = order[step * args.batch_size : (step + 1) * args.batch_size]
            images = torch.from_numpy(tr.images[idx.numpy()]).float()
            y = torch.from_numpy(tr.labels[idx.numpy()])
            if aux is None:
                x = augment(images, generator).contiguous(memory_format=torch.channels_last)
                logits = classifier(x)
                loss = F.cross_entropy(logits, y, weight=class_weight, label_smoothing=0.05)
            else:
                x, masks = augment(images, generator, box_masks(tr.boxes[idx.numpy()], (size, size)))
                features = model.forward_features(classifier.preprocess(x.contiguous(memory_format=torch.channels_last)))
                logits = model.forward_head(features)
                loss = F.cross_entropy(logits, y, weight=class_weight, label_smoothing=0.05)
                for conv, fmap in zip(aux, (features, captured["mid"])):
                    seg = conv(fmap)
                    loss = loss + args.box_supervision * F.binary_cross_entropy_with_logits(
                        seg, _cell_targets(masks, seg.shape[-2:]), pos_weight=pos_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            seen += len(y)
            correct += int((logits.argmax(1) == y).sum())
            total_loss += loss.item() * len(y)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
        probs = predict_probs(classifier, va.images)
        val = binary_metrics(va.labels, probs, n_bootstrap=0)
        val_loss = float(-np.mean(np.log(np.clip(np.where(va.labels == 1, probs, 1 - probs), 1e-7, 1))))
        row = {"epoch": epoch, "train_loss": round(total_loss / seen, 5), "train_accuracy": round(correct / seen, 4),
               "val_loss": round(val_loss, 5), "val_accuracy": round(val["accuracy"]["value"], 4), "val_auc": round(val["auc"]["value"], 4)}
        history.append(row)
        improved = (row["val_auc"], -val_loss) > (best["auc"], -best["loss"])
        if improved:
            best = {"auc": row["val_auc"], "loss": val_loss, "epoch": epoch,
                    "state": {k: v.detach().clone() for k, v in classifier.model.state_dict().items()}}
        print(f"epoch {epoch}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f} | validation loss "
              f"{val_loss:.4f} acc {row['val_accuracy']:.3f} AUC {row['val_auc']:.4f}{'  (best)' if improved else ''}", file=sys.stderr)

    if aux is not None:
        hook.remove()
    network.load_state_dict(best["state"])
    network.eval()
    classifier.eval()
    val_probs = predict_probs(classifier, va.images)
    figures = {"validation": binary_metrics(va.labels, val_probs, seed=args.seed)}
    if len(te.labels) and len(set(te.labels.tolist())) == 2:
        figures["test"] = binary_metrics(te.labels, predict_probs(classifier, te.images), seed=args.seed)
    if args.save_checkpoint:  # in a shape `hipcad export` reads back
        state = model.state_dict() if head is None else {
            **{f"0.{k}": v for k, v in model.state_dict().items() if not k.startswith("classifier.")},
            **{f"1.{k}": v for k, v in head.state_dict().items()}}
        torch.save(state, args.save_checkpoint)
    synthetic = args.synthetic_demo or (Path(args.dataset) / "synth.json").is_file()
    training = {
        "dataset": Path(args.dataset).name,
        "radiographs": {"train": len(train_recs), "validation": len(val_recs), "test": len(test_recs)},
        "halves": {"train": int(len(tr.labels)), "validation": int(len(va.labels)), "test": int(len(te.labels))},
        "cut": f"vertical dividing line at the pelvic midline, moved to keep {MARGIN_PX} px from the fracture box",
        "head": args.head, "epochs": args.epochs, "best_epoch": best["epoch"], "history": history,
        "optimizer": {"name": "AdamW", "max_lr": args.lr, "weight_decay": args.weight_decay, "schedule": "one-cycle",
                      "batch_size": args.batch_size, "label_smoothing": 0.05,
                      "class_weight": [round(float(w), 4) for w in class_weight]},
        "box_supervision": args.box_supervision if aux is not None else 0.0,
        "init": "random (no pretrained weights reachable offline)" if args.init is None else Path(args.init).name,
        "seconds": round(time.time() - start),
        "figures": figures,
    }
    provenance = {"source": "hipcad train", "seed": args.seed,
                  "command": "hipcad train " + " ".join(args.argv)}
    fused = fuse_timm(model) if head is None else FusedCAMModel(TimmFeatures(model), FastaiHeadCAM(head)).eval()
    export_bundle(fused, args.out, architecture=args.arch, input_hw=(size, size), provenance=provenance,
                  trained=True, synthetic_demo=synthetic, threshold=0.5, with_torch=not args.no_torch,
                  extra={"training": training}, head="pool-linear" if head is None else "fastai-concat-pool")
    v = figures["validation"]
    print(f"wrote {args.out}: best epoch {best['epoch']}, validation accuracy {v['accuracy']['value']:.3f}, "
          f"AUC {v['auc']['value']:.4f}" + (" (SYNTHETIC DEMO - not for clinical use)" if synthetic else ""))
    return 0


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
    parser.add_argument("--synthetic-demo", action="store_true", help="label the bundle a synthetic demo (automatic for `hipcad synth` folders)")
    parser.add_argument("--no-torch", action="store_true", help="leave model.pt2 out of the bundle (smaller)")
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return train(args)
    except HipcadError as err:
        print(f"hipcad train: {err}", file=sys.stderr)
        return 1
