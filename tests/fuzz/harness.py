"""Mutation fuzzing of hipcad's decode path, supervised so that a crash or a hang costs one mutant.

    python -m tests.fuzz.harness --out DIR [--seeds .cache/fuzz/seeds] [--count 100000] [--run-seed 1]
        [--decoder pool|inprocess] [--stage decode|load] [--timeout 5] [--max-seconds S] [--start 0]

Mutant ``index`` of run ``run-seed`` (:func:`tests.fuzz.mutate.mutant`) is written to a file and read
by the product's decoder: ``pool`` -- a :class:`~hipcad.runtime.imaging.isolation.DecodePool`, as the
worker and ``hipcad predict`` use it -- or ``inprocess`` (the decoder itself, in a supervised process
with a per-mutant SIGALRM: finds what isolation would hide). ``--stage load`` goes one step further,
through ``Pipeline.load`` (decode, then everything before inference) with the demo bundle.

Outcomes per mutant:

  ok              decoded; the Radiograph checked (2-D uint8, sizes within the limits)
  rejected        a HipcadError with its message: the expected way to refuse a bad file
  codec_panic     rejected, where a codec raised a BaseException the decoder caught (counted apart)
  contained_*     (pool) rejected because the decoding process crashed / hung / hit a bug: the
                  isolation held, but the decoder has a fault worth a look
  unexpected      any other exception reached the caller (BaseException included)
  invalid         decoded, but the Radiograph breaks an invariant
  hang            the alarm fired (in-process), or the supervisor found the harness process stuck
  death           the harness process died (segfault, abort, out of memory)

Findings (everything but ok / rejected / codec_panic, and mutants slower than 1 s) go to
OUT/findings.jsonl with their recipe; OUT/summary.json has the counts and the throughput. The exit
status is 1 when there was an unexpected exception, an invalid result, a hang or a death. A finding
goes into the regression corpus with ``python -m tests.fuzz.regress add OUT/findings.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

from tests.fuzz.mutate import load_seeds, mutant

SLOW_S = 1.0
FAILURES = ("unexpected", "invalid", "hang", "death", "harness_error")
CONTAINED = (("the decoder crashed", "contained_death"), ("the decoder aborted", "contained_death"),
             ("the decoder was killed", "contained_death"), ("the decoder exited", "contained_death"),
             ("the decoder used up", "contained_hang"), ("decoding took longer", "contained_hang"),
             ("the decoder failed on this file", "contained_panic"),
             ("cannot decode the file: internal error", "contained_bug"))


class Alarm(BaseException):
    pass


def _alarm(signum, frame):
    raise Alarm()


def where(err: BaseException) -> dict:
    """The innermost frame, and the innermost frame in hipcad, of an exception's traceback."""
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if "/hipcad/" in f.filename or "/runtime/" in f.filename]

    def fmt(frame):
        return f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno} {frame.name}" if frame else None

    return {"at": fmt(frames[-1] if frames else None), "hipcad": fmt(ours[-1] if ours else None)}


def check_radiograph(radiograph, limits) -> str | None:
    import numpy as np

    pixels = radiograph.pixels
    if not isinstance(pixels, np.ndarray) or pixels.ndim != 2 or pixels.dtype != np.uint8 or 0 in pixels.shape:
        return f"pixels {getattr(pixels, 'dtype', None)} {getattr(pixels, 'shape', None)}"
    rows, cols = radiograph.original_shape
    if not (0 < rows <= limits.max_side and 0 < cols <= limits.max_side):
        return f"original_shape {radiograph.original_shape}"
    return None


def classify(message: str, pool: bool) -> str:
    if pool:
        for prefix, kind in CONTAINED:
            if message.startswith(prefix):
                return kind
    return "codec_panic" if "the decoder failed (" in message else "rejected"


class Target:
    """What one mutant goes through: the decoder (pool or in-process), and with stage 'load' the
    pipeline's load step (demo bundle, a backend that is never called)."""

    def __init__(self, decoder: str, stage: str, timeout: float, memory_mb: int) -> None:
        from hipcad.runtime.imaging.isolation import DecodePool, InProcessDecoder, IsolationLimits

        self.pool = decoder == "pool"
        self.decoder = DecodePool(1, IsolationLimits(timeout_s=timeout, memory_mb=memory_mb)) if self.pool \
            else InProcessDecoder()
        self.pipeline = None
        if stage == "load":
            import types

            from hipcad.runtime.inference.pipeline import Pipeline
            from hipcad.runtime.model.bundle import load_bundle

            backend = types.SimpleNamespace(name="none", device="none", precision="fp32")
            self.pipeline = Pipeline(load_bundle(None), backend, decoder=self.decoder)

    def run(self, path: str, min_side: int | None):
        """(kind, detail) for one mutant."""
        from hipcad.runtime.errors import HipcadError
        from hipcad.runtime.imaging.limits import DEFAULT_LIMITS

        if self.pipeline is not None:
            if min_side is not None:
                self.pipeline.min_decode_side = min_side
            loaded = self.pipeline.load(path)
            result = loaded.result
            if result.error_kind == "internal":
                return "unexpected", {"message": result.error[:300]}
            if result.error_kind == "decoder":
                return "harness_error", {"message": result.error[:300]}
            if result.error:
                return classify(result.error, self.pool), None
            bad = check_radiograph(loaded.radiograph, DEFAULT_LIMITS)
            return ("invalid", {"detail": bad}) if bad else ("ok", None)
        try:
            radiograph = self.decoder.decode(path, DEFAULT_LIMITS, min_side)
        except HipcadError as err:
            kind = classify(str(err), self.pool)
            return kind, ({"message": str(err)[:300]} if kind.startswith("contained") else None)
        bad = check_radiograph(radiograph, DEFAULT_LIMITS)
        return ("invalid", {"detail": bad}) if bad else ("ok", None)

    def close(self) -> None:
        self.decoder.close()


def work(conn, args, start: int, end: int, current, deadline: float | None) -> None:
    """The harness process: mutants start..end-1, one answer per mutant on ``conn``."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # Rust panic messages, codec chatter
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if args.decoder == "inprocess":  # a runaway allocation must not take the machine
        with open("/proc/self/status") as fh:
            size = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (size + args.memory_mb * 2**20,) * 2)
        signal.signal(signal.SIGALRM, _alarm)
    seeds = load_seeds(args.seeds)
    target = Target(args.decoder, args.stage, args.timeout, args.memory_mb)
    path = os.path.join(args.scratch, f"mutant-{os.getpid()}.bin")
    try:
        for index in range(start, end):
            if deadline is not None and time.time() > deadline:
                conn.send((index, "stop", None))
                return
            current.value = index
            data, recipe = mutant(seeds, args.run_seed, index)
            with open(path, "wb") as fh:
                fh.write(data)
            started = time.perf_counter()
            try:
                if args.decoder == "inprocess":
                    signal.setitimer(signal.ITIMER_REAL, args.timeout)
                try:
                    kind, detail = target.run(path, recipe["min_side"])
                finally:
                    if args.decoder == "inprocess":
                        signal.setitimer(signal.ITIMER_REAL, 0)
            except Alarm:
                kind, detail = "hang", {"timeout_s": args.timeout}
            except BaseException as err:  # noqa: BLE001 - what we are looking for
                kind, detail = "unexpected", {"type": type(err).__name__, "message": str(err)[:300], **where(err)}
            seconds = time.perf_counter() - started
            if detail is None and seconds > SLOW_S:
                detail = {"slow": True}
            if detail is not None:
                detail.update(kind=kind, seconds=round(seconds, 3), recipe=recipe)
            conn.send((index, kind, detail))
    finally:
        target.close()
        try:
            os.unlink(path)
        except OSError:
            pass


def supervise(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("fork")  # the supervisor has no threads
    counts: Counter = Counter()
    index, end = args.start, args.start + args.count
    deadline = time.time() + args.max_seconds if args.max_seconds else None
    stuck_after = args.timeout * 3 + 30
    started = last_print = time.perf_counter()
    restarts = 0
    with open(out / "findings.jsonl", "a") as findings, tempfile.TemporaryDirectory(prefix="hipcad-fuzz-") as scratch:
        args.scratch = scratch
        while index < end:
            current = ctx.Value("q", index)
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=work, args=(child, args, index, end, current, deadline))
            proc.start()
            child.close()
            while index < end:
                restart = True
                if not parent.poll(stuck_after):  # stuck where nothing answers: C code holding the GIL
                    i = current.value
                    proc.kill()
                    kind, detail = "hang", {"stuck_after_s": stuck_after}
                else:
                    restart = False
                    try:
                        i, kind, detail = parent.recv()
                    except EOFError:
                        proc.join(10)
                        i = current.value
                        if proc.exitcode == 0:
                            index = end
                            break
                        kind, detail, restart = "death", {"exitcode": proc.exitcode}, True
                    if kind == "stop":
                        index = end = i
                        break
                counts[kind] += 1
                if detail is not None:
                    detail.setdefault("kind", kind)
                    detail.setdefault("recipe", {"run_seed": args.run_seed, "index": i})
                    findings.write(json.dumps(detail) + "\n")
                    findings.flush()
                index = i + 1
                if restart:
                    restarts += 1
                    break
                now = time.perf_counter()
                if now - last_print > 30 and not args.quiet:
                    last_print = now
                    done = index - args.start
                    print(f"{done} mutants, {done / (now - started):.0f}/s, {dict(counts)}", flush=True)
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    elapsed = time.perf_counter() - started
    done = index - args.start
    summary = {"run_seed": args.run_seed, "start": args.start, "count": done, "decoder": args.decoder,
               "stage": args.stage, "timeout_s": args.timeout, "seconds": round(elapsed, 1),
               "mutants_per_s": round(done / elapsed, 1) if elapsed else None, "harness_restarts": restarts,
               "counts": dict(sorted(counts.items())),
               "failures": sum(counts[k] for k in FAILURES)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.harness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default=".cache/fuzz/seeds", help="made by python -m tests.fuzz.seeds")
    parser.add_argument("--out", required=True)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--run-seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per mutant (the pool's decode timeout)")
    parser.add_argument("--decoder", choices=("pool", "inprocess"), default="pool")
    parser.add_argument("--stage", choices=("decode", "load"), default="decode")
    parser.add_argument("--memory-mb", type=int, default=3072, help="address space per decoding process")
    parser.add_argument("--max-seconds", type=float, help="stop starting mutants after this long (CI)")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    if not Path(args.seeds).is_dir():
        parser.error(f"no seeds in {args.seeds}: run python -m tests.fuzz.seeds {args.seeds}")
    summary = supervise(args)
    print(json.dumps(summary, indent=2))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
