"""The training loop: one-cycle schedule, weighted loss, the epoch with the best validation AUC kept,
the bundle exported with its history and figures."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hipcad.export.checkpoint import create_timm, read_state_dict
from hipcad.export.fused import FusedCAMModel, TimmFeatures, fuse_timm
from hipcad.export.heads import FastaiHeadCAM, fastai_head
from hipcad.export.layout_template import LayoutTemplateError, read_overrides
from hipcad.export.layout_template import build as build_layout
from hipcad.export.train.augment import augment, box_masks
from hipcad.export.train.halves import MARGIN_PX, cached_halves
from hipcad.export.train.model import (
    Classifier,
    _cell_targets,
    _feature_hw,
    _negatives_per_positive,
    predict_logits,
    predict_probs,
)
from hipcad.runtime.errors import HipcadError
from hipcad.runtime.evaluation.calibration import calibrated_manifest, convert_threshold, fit_calibration, summary
from hipcad.runtime.evaluation.dataset import Dataset, load_dataset, split_by_patient
from hipcad.runtime.evaluation.stats import binary_metrics
from hipcad.runtime.imaging.decode import decode
from hipcad.runtime.inference.pipeline import min_decode_side
from hipcad.runtime.inference.verdict import log_odds_probability
from hipcad.runtime.model.notice import SYNTHETIC_DEMO
from hipcad.runtime.model.reference import make_reference
from hipcad.runtime.tools.signing import rewrite_manifest


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
    val_logits = predict_logits(classifier, va.images)
    # the calibration is fitted on the validation split; the figures are on the scale shown
    fit = None
    if args.calibration != "none":
        try:
            fit = fit_calibration(val_logits, va.labels, args.calibration)
        except ValueError as err:  # a tiny or perfectly separated validation split: keep the scores
            print(f"no calibration: {err}; the bundle shows uncalibrated scores", file=sys.stderr)
    scale = (fit["temperature"], fit["bias"]) if fit else (1.0, 0.0)
    threshold = convert_threshold(0.5, (1.0, 0.0), scale)
    figures = {"validation": binary_metrics(va.labels, log_odds_probability(val_logits, *scale), threshold, seed=args.seed)}
    if len(te.labels) and len(set(te.labels.tolist())) == 2:
        te_probs = log_odds_probability(predict_logits(classifier, te.images), *scale)
        figures["test"] = binary_metrics(te.labels, te_probs, threshold, seed=args.seed)
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
    layout = training_layout(train_recs, (size, size))
    reference = make_reference(val_logits, va.labels, f"validation split of hipcad train on {training['dataset']}")
    manifest = export_bundle(fused, args.out, architecture=args.arch, input_hw=(size, size), provenance=provenance,
                             trained=True, synthetic_demo=synthetic, threshold=0.5, with_torch=not args.no_torch,
                             extra={"training": training, "reference": reference},
                             head="pool-linear" if head is None else "fastai-concat-pool",
                             intended_use=read_overrides(args.intended_use), layout=layout)
    if fit:
        before, after = summary(va.labels, val_logits, fit)
        fitted_on = {"dataset": training["dataset"], "split": "validation", "radiographs": len(val_recs),
                     "halves": int(len(va.labels)), "fractured_halves": int(va.labels.sum()), "by": "hipcad train"}
        manifest = calibrated_manifest(manifest, fit, fitted_on, before, after)
        rewrite_manifest(Path(args.out), manifest)
    v = figures["validation"]
    print(f"wrote {args.out}: best epoch {best['epoch']}, validation accuracy {v['accuracy']['value']:.3f}, "
          f"AUC {v['auc']['value']:.4f}"
          + (f"; {fit['method']} calibration T={fit['temperature']:.3g}, ECE {before['ece']:.3f} -> {after['ece']:.3f}"
             if fit else "; uncalibrated") + (f" ({SYNTHETIC_DEMO.banner})" if synthetic else ""))
    return 0


LAYOUT_IMAGES = 200  # training radiographs the eligibility layout template is built from


def training_layout(records, input_hw: tuple[int, int]) -> tuple[dict, dict] | None:
    """The eligibility check's layout template from (up to LAYOUT_IMAGES of) the training
    radiographs, decoded as the runtime decodes them; None (hipcad's default template) when too
    few of them show two femoral heads."""
    sample = records[:: max(1, len(records) // LAYOUT_IMAGES)][:LAYOUT_IMAGES]
    images = (decode(rec.path, min_side=min_decode_side(input_hw)).pixels for rec in sample)
    try:
        return build_layout(images, f"{len(sample)} training radiographs of this bundle")
    except LayoutTemplateError as err:
        print(f"note: {err}; the bundle gets hipcad's default layout template", file=sys.stderr)
        return None
