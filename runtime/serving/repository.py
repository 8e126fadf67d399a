"""``hipcad triton-repo``: a bundle as a Triton Inference Server model repository.

    REPO/<model>/config.pbtxt
    REPO/<model>/1/model.onnx              --platform onnxruntime (NVIDIA's container, GPU or CPU)
    REPO/<model>/1/model.plan              --platform tensorrt (the plan `hipcad build-engine` made)
    REPO/<model>/1/model.py + model.onnx   --platform python (ONNX Runtime in Triton's Python backend:
                                           `hipcad serve`, or the container with onnxruntime added)
    REPO/<model>/1/manifest.json           the bundle's manifest, for people (Triton ignores it)

The config declares exactly the bundle's contract (``image`` UINT8 [-1,1,H,W]; ``logits`` FP32
[-1,2]; ``cam`` FP32 [-1,h,w]), dynamic batching (preferred sizes in whole radiographs, a bounded
queue delay), instance groups, a warm-up, and the bundle's identity as parameters, which the
``triton`` backend checks before it sends a radiograph. Every config is parsed with Triton's own
model-config protobuf (``tritonclient.grpc.model_config_pb2``) before anything is written.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hipcad.runtime.backends.triton import IDENTITY_KEYS, PARAM_PREFIX, identity_parameters, model_name_for
from hipcad.runtime.errors import HipcadError

if TYPE_CHECKING:
    from hipcad.runtime.model.bundle import Bundle

MODEL_PY = Path(__file__).resolve().parent / "triton_python" / "model.py"
# --platform: (config key and value, file in the version folder, default instance kind)
PLATFORMS = {
    "onnxruntime": (("platform", "onnxruntime_onnx"), "model.onnx", "gpu"),
    "tensorrt": (("platform", "tensorrt_plan"), "model.plan", "gpu"),
    "python": (("backend", "python"), "model.py", "cpu"),
}
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class RepositoryError(HipcadError):
    """A Triton model repository cannot be written as asked (bad option, config refused, no plan)."""


def preferred_batch_sizes(max_batch: int) -> list[int]:
    """Whole radiographs (2 halves each) in powers of two up to ``max_batch``, and ``max_batch``."""
    sizes, size = [], 2
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return [*sizes, max_batch]


def _q(text: str) -> str:
    """A string as a protobuf text-format literal (bundle names may hold quotes or non-ASCII)."""
    from google.protobuf import text_encoding

    return '"' + text_encoding.CEscape(str(text), as_utf8=True) + '"'


def _cam_dims(bundle: "Bundle") -> list[int]:
    """The heatmap's [h, w] from the manifest; -1 (variable) where it does not say."""
    shape = ((bundle.manifest.get("outputs") or {}).get("cam") or {}).get("shape") or []
    dims = [d if isinstance(d, int) and d > 0 else -1 for d in shape[1:3]]
    return dims if len(dims) == 2 else [-1, -1]


def config_text(bundle: "Bundle", platform: str = "python", *, model_name: str | None = None, max_batch: int = 8,
                instances: int = 1, kind: str | None = None, queue_delay_us: int = 2000, max_queue_size: int = 0,
                ort_threads: int = 0, parameters: dict[str, str] | None = None) -> str:
    """config.pbtxt for ``bundle`` (validate it with :func:`validate`)."""
    if platform not in PLATFORMS:
        raise RepositoryError(f"platform must be one of {', '.join(PLATFORMS)}, not {platform!r}")
    (key, value), _, default_kind = PLATFORMS[platform]
    h, w = bundle.input_hw
    ch, cw = _cam_dims(bundle)
    image_dims = f"[ 1, {h}, {w} ]"
    params = {**identity_parameters(bundle), **(parameters or {})}
    if platform == "python" and ort_threads:
        params[PARAM_PREFIX + "ort_threads"] = str(ort_threads)
    lines = [
        f"name: {_q(model_name or model_name_for(bundle))}",
        f"{key}: {_q(value)}",
        f"max_batch_size: {max_batch}",
        # with max_batch_size > 0 the dims leave the batch out: the served shape is [-1, 1, H, W]
        f'input [ {{ name: "image" data_type: TYPE_UINT8 dims: {image_dims} }} ]',
        "output [",
        '  { name: "logits" data_type: TYPE_FP32 dims: [ 2 ] },',
        f'  {{ name: "cam" data_type: TYPE_FP32 dims: [ {ch}, {cw} ] }}',
        "]",
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(map(str, preferred_batch_sizes(max_batch)))} ]",
        f"  max_queue_delay_microseconds: {queue_delay_us}",
    ]
    if max_queue_size:
        # measured on tritonserver 2.51 with one instance: with a queue policy, some requests that
        # arrive just as the instance finishes wait the batcher's 500 ms idle time (none without)
        lines.append(f"  default_queue_policy {{ max_queue_size: {max_queue_size} }}")
    lines += [
        "}",
        f"instance_group [ {{ kind: {KINDS[kind or default_kind]} count: {instances} }} ]",
        "model_warmup [ {",
        '  name: "zeros_one_radiograph" batch_size: 2',
        f'  inputs {{ key: "image" value {{ data_type: TYPE_UINT8 dims: {image_dims} zero_data: true }} }}',
        "} ]",
        "parameters [",
        ",\n".join(f"  {{ key: {_q(k)} value {{ string_value: {_q(v)} }} }}" for k, v in params.items()),
        "]",
    ]
    return "\n".join(lines) + "\n"


def validate(text: str):
    """The config parsed by Triton's model-config protobuf, plus the checks a parser cannot make;
    RepositoryError when either fails."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2 as pb
    except ImportError as err:
        raise RepositoryError(f"validating a Triton config needs tritonclient (pip install 'hipcad[triton]'): {err}") from err
    try:
        config = text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as err:
        raise RepositoryError(f"Triton's model-config protobuf refuses the config: {err}") from err
    problems = []
    if not _NAME_RE.match(config.name):
        problems.append(f"model name {config.name!r} is not a plain name (letters, digits, _ . -)")
    if config.max_batch_size < 1:
        problems.append("max_batch_size must be at least 1")
    if any(size > config.max_batch_size or size < 1 for size in config.dynamic_batching.preferred_batch_size):
        problems.append("a preferred batch size is outside 1..max_batch_size")
    if [(i.name, i.data_type, len(i.dims)) for i in config.input] != [("image", pb.TYPE_UINT8, 3)]:
        problems.append("the input must be image TYPE_UINT8 [1, H, W]")
    if [(o.name, o.data_type) for o in config.output] != [("logits", pb.TYPE_FP32), ("cam", pb.TYPE_FP32)]:
        problems.append("the outputs must be logits and cam, TYPE_FP32")
    if any(group.count < 1 for group in config.instance_group):
        problems.append("an instance group needs a count of at least 1")
    missing = [k for k in IDENTITY_KEYS if PARAM_PREFIX + k not in config.parameters]
    if missing:
        problems.append(f"identity parameters missing: {', '.join(missing)}")
    if problems:
        raise RepositoryError("invalid Triton config: " + "; ".join(problems))
    return config


def find_plan(bundle: "Bundle", plan: str | Path | None = None, cache_dir: str | Path | None = None,
              gpu: str | None = None, tensorrt: str | None = None) -> tuple[Path, dict, bytes]:
    """The TensorRT plan ``hipcad build-engine`` made for this bundle, its sidecar record and its
    bytes as checked (the repository gets exactly those).

    ``plan`` names one; otherwise the plan caches of the bundle are searched and exactly one plan
    (after the ``gpu`` and ``tensorrt`` filters) must match. The plan's bytes and sidecar are checked
    as the TensorRT backend checks them, and its ONNX hash must be this bundle's.
    """
    from hipcad.runtime.backends.trt import plan_cache

    if plan is not None:
        candidates = [Path(plan)]
    else:
        candidates = sorted({p for d in plan_cache.plan_dirs(bundle, cache_dir) if d.is_dir() for p in d.glob("*.plan")})
    found, problems = [], []
    for path in candidates:
        try:
            record = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
            key = plan_cache.EngineKey(**record["key"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            problems.append(f"{path}: no readable sidecar ({err})")
            continue
        if key.onnx_sha256 != bundle.onnx_sha256:
            problems.append(f"{path}: built from another ONNX graph")
            continue
        if (gpu and key.gpu_name != gpu) or (tensorrt and key.tensorrt != tensorrt):
            continue
        try:
            data, record = plan_cache.read_plan(path, key, record.get("tensorrt_built", key.tensorrt))
        except plan_cache.PlanCacheError as err:
            problems.append(str(err))
            continue
        found.append((path, record, data))
    if len(found) == 1:
        return found[0]
    where = str(plan) if plan else ", ".join(str(d) for d in plan_cache.plan_dirs(bundle, cache_dir))
    if not found:
        raise RepositoryError(f"no usable TensorRT plan for {bundle.name} in {where}"
                              + (f" ({'; '.join(problems)})" if problems else "")
                              + ": build one on the server's GPU with the server's TensorRT version "
                              "(`hipcad build-engine BUNDLE --max-batch 8`), or pass --plan")
    listed = "; ".join(f"{p.name}: {r['key']['gpu_name']}, TensorRT {r['key']['tensorrt']}, {r['key']['precision']}"
                       for p, r, _ in found)
    raise RepositoryError(f"several TensorRT plans for {bundle.name} ({listed}): choose with --gpu / --tensorrt or --plan")


def write_repository(bundle: "Bundle", out: str | Path, platform: str = "python", *, plan: str | Path | None = None,
                     cache_dir: str | Path | None = None, gpu: str | None = None, tensorrt: str | None = None,
                     **options) -> Path:
    """Write (or replace) ``out/<model>/`` for ``bundle``; returns that folder. ``options`` go to
    :func:`config_text`. The folder is assembled beside its place and renamed into it only when
    complete, so a running server never sees half a model."""
    from hipcad.runtime.model.bundle import staged_bundle

    source = None
    if platform == "tensorrt":
        source, record, plan_bytes = find_plan(bundle, plan, cache_dir, gpu, tensorrt)
        key = record["key"]
        plan_max = int(key["max_batch"])
        options.setdefault("max_batch", plan_max)
        if options["max_batch"] > plan_max:
            raise RepositoryError(f"the TensorRT plan {source.name} takes batches of up to {plan_max}, not "
                                  f"{options['max_batch']}: pass --max-batch {plan_max}, or build a plan with "
                                  f"`hipcad build-engine --max-batch {options['max_batch']}`")
        options["parameters"] = {PARAM_PREFIX + "precision": key["precision"], PARAM_PREFIX + "tensorrt": key["tensorrt"],
                                 PARAM_PREFIX + "gpu": key["gpu_name"], PARAM_PREFIX + "plan_sha256": record["plan_sha256"]}
    elif plan is not None:
        raise RepositoryError("--plan is for --platform tensorrt")
    text = config_text(bundle, platform, **options)
    config = validate(text)
    model_dir = Path(out) / config.name
    with staged_bundle(model_dir) as work:
        version = work / "1"
        version.mkdir()
        (work / "config.pbtxt").write_text(text, encoding="utf-8")
        shutil.copyfile(bundle.path / "manifest.json", version / "manifest.json")
        if platform in ("onnxruntime", "python"):
            (version / "model.onnx").write_bytes(bundle.verified_onnx_bytes)  # checked against the manifest
        if platform == "python":
            shutil.copyfile(MODEL_PY, version / "model.py")
        if platform == "tensorrt":
            (version / "model.plan").write_bytes(plan_bytes)  # the bytes checked against the sidecar
    return model_dir


def add_config_arguments(parser, max_batch_default: int | None = 8) -> None:
    """Options of the generated config, shared by ``hipcad triton-repo`` and ``hipcad serve``."""
    parser.add_argument("--name", metavar="MODEL", help="model name on the server (default: hipcad_<bundle name>)")
    parser.add_argument("--max-batch", type=int, default=max_batch_default, metavar="N",
                        help="largest batch of half-images the server forms (default 8 = 4 radiographs; "
                        "tensorrt: the plan's)")
    parser.add_argument("--instances", type=int, default=1, metavar="K", help="model instances (default 1)")
    parser.add_argument("--queue-delay-us", type=int, default=2000, metavar="US",
                        help="longest wait for a fuller batch, in microseconds (default 2000)")
    parser.add_argument("--max-queue-size", type=int, default=0, metavar="N",
                        help="refuse requests beyond N queued (default 0: no limit; see the README on queue stalls)")
    parser.add_argument("--ort-threads", type=int, default=0, metavar="T",
                        help="python platform: ONNX Runtime threads per instance (default: all cores)")


def config_options(args) -> dict:
    options = {"model_name": args.name, "instances": args.instances, "queue_delay_us": args.queue_delay_us,
               "max_queue_size": args.max_queue_size, "ort_threads": args.ort_threads}
    if args.max_batch is not None:
        options["max_batch"] = args.max_batch
    for name in ("max_batch", "instances"):
        if options.get(name) is not None and options[name] < 1:
            raise RepositoryError(f"--{name.replace('_', '-')} must be at least 1")
    if args.queue_delay_us < 0 or args.max_queue_size < 0 or args.ort_threads < 0:
        raise RepositoryError("--queue-delay-us, --max-queue-size and --ort-threads must not be negative")
    return options


def main(argv: list[str] | None = None) -> int:
    """``hipcad triton-repo``: write a Triton model repository for a bundle."""
    from hipcad.runtime.model.bundle import load_bundle

    parser = argparse.ArgumentParser(
        prog="hipcad triton-repo",
        description="Write a Triton Inference Server model repository for a bundle: config.pbtxt (validated with "
        "Triton's model-config protobuf) and the model file. onnxruntime and tensorrt are for NVIDIA's tritonserver "
        "container on a GPU server; python (ONNX Runtime inside Triton's Python backend) is what `hipcad serve` runs.")
    parser.add_argument("bundle", help="model bundle folder")
    parser.add_argument("--out", required=True, metavar="REPO", help="model repository folder (created; the model's "
                        "folder in it is replaced)")
    parser.add_argument("--platform", choices=list(PLATFORMS), default="onnxruntime",
                        help="onnxruntime (default), tensorrt, or python")
    parser.add_argument("--kind", choices=list(KINDS), help="instance kind (default: gpu; python: cpu)")
    add_config_arguments(parser, max_batch_default=None)
    group = parser.add_argument_group("--platform tensorrt")
    group.add_argument("--plan", metavar="FILE", help="the plan to serve (default: the one plan for this bundle in "
                       "the bundle's engines/ or --cache-dir)")
    group.add_argument("--cache-dir", metavar="DIR", help="plan cache of `hipcad build-engine --cache-dir`")
    group.add_argument("--gpu", metavar="NAME", help="pick the plan built for this GPU name")
    group.add_argument("--tensorrt", metavar="VERSION", help="pick the plan built with this TensorRT version")
    args = parser.parse_args(argv)
    try:
        bundle = load_bundle(args.bundle)
        options = config_options(args)
        options["kind"] = args.kind
        if args.platform != "tensorrt":
            options.setdefault("max_batch", 8)
        model_dir = write_repository(bundle, args.out, args.platform, plan=args.plan, cache_dir=args.cache_dir,
                                     gpu=args.gpu, tensorrt=args.tensorrt, **options)
    except HipcadError as err:
        print(f"hipcad triton-repo: {err}", file=sys.stderr)
        return 1
    print(f"wrote {model_dir} ({args.platform}); serve with: tritonserver --model-repository={Path(args.out).resolve()}")
    return 0
