"""The regression corpus: every decoder fault found so far, rebuilt from its recipe and checked.

    python -m tests.fuzz.regress check [--decoder pool|inprocess] [--seeds DIR] [--corpus FILE]
        rebuilds each entry and reads it: it must be refused (or, for entries expected to decode,
        decoded) within its time; exit status 1 if any is not
    python -m tests.fuzz.regress write OUT_DIR     writes the files (bytes are never committed)
    python -m tests.fuzz.regress add FINDINGS.jsonl  adds a run's findings, one per distinct signature

corpus.json: [{"name", "kind", "expect": "refused" | "decoded", "found": what hipcad did before the
fix, "recipe": {"case": NAME, "args": {...}} (tests.fuzz.cases) or a mutation recipe {seed_file,
seed_sha256, run_seed, index, sha256, min_side}}]. A mutation recipe whose seed changed or whose
mutant no longer hashes the same is an error, said, never skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.fuzz import cases
from tests.fuzz.mutate import load_seeds, mutant

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus.json"
MAX_SECONDS = 3.0  # a 40 x 48 seed that takes longer is a bomb, not a radiograph
MAX_PEAK_MB = 1024

# one entry decoded in a fresh interpreter under an address-space limit: the fault must be fixed,
# not just contained by the pool
PROBE = r"""
import json, resource, sys, time
size = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + (3 << 30),) * 2)
from hipcad.runtime.errors import HipcadError
from hipcad.runtime.imaging.isolation import InProcessDecoder
from hipcad.runtime.imaging.isolation_child import warm
warm("all")  # the imports are not the file's time
path, min_side = sys.argv[1], (None if sys.argv[2] == "None" else int(sys.argv[2]))
start = time.perf_counter()
try:
    r = InProcessDecoder().decode(path, min_side=min_side)
    out = {"outcome": "decoded", "shape": list(r.pixels.shape)}
except HipcadError as err:
    out = {"outcome": "refused", "message": str(err)[:200]}
except BaseException as err:
    out = {"outcome": "unexpected", "type": type(err).__name__, "message": str(err)[:200]}
out["seconds"] = round(time.perf_counter() - start, 2)
out["peak_mb"] = next(int(l.split()[1]) // 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps(out))
"""


class RecipeError(Exception):
    pass


def rebuild(recipe: dict, seeds: dict[str, bytes], folder: Path) -> Path:
    """The file an entry describes, written into ``folder``."""
    if "case" in recipe:
        return cases.make(recipe["case"], folder / f"{recipe['case']}.bin", **recipe.get("args", {}))
    name = recipe["seed_file"]
    if name not in seeds:
        raise RecipeError(f"seed {name} is missing (python -m tests.fuzz.seeds)")
    if hashlib.sha256(seeds[name]).hexdigest()[:16] != recipe["seed_sha256"]:
        raise RecipeError(f"seed {name} is not the one the recipe was recorded on (seeds.py or a library changed)")
    data, again = mutant(seeds, recipe["run_seed"], recipe["index"])
    if again["sha256"] != recipe["sha256"]:
        raise RecipeError(f"recipe {recipe['run_seed']}:{recipe['index']} no longer rebuilds the same bytes (mutate.py changed)")
    path = folder / f"mutant-{recipe['run_seed']}-{recipe['index']}.bin"
    path.write_bytes(data)
    return path


def read_in_pool(pool, path: Path, min_side) -> dict:
    from hipcad.runtime.errors import HipcadError

    start = time.perf_counter()
    try:
        r = pool.decode(path, min_side=min_side)
        out = {"outcome": "decoded", "shape": list(r.pixels.shape)}
    except HipcadError as err:
        out = {"outcome": "refused", "message": str(err)[:200]}
    except BaseException as err:  # noqa: BLE001 - reported
        out = {"outcome": "unexpected", "type": type(err).__name__, "message": str(err)[:200]}
    out["seconds"] = round(time.perf_counter() - start, 2)
    return out


def read_in_process(path: Path, min_side, timeout: float) -> dict:
    try:
        done = subprocess.run([sys.executable, "-c", PROBE, str(path), str(min_side)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"outcome": "hang", "timeout_s": timeout}
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {"outcome": "death", "exitcode": done.returncode}


def check(decoder: str = "pool", seeds_dir: str = ".cache/fuzz/seeds", corpus: Path = CORPUS,
          timeout: float = 15.0, echo=print) -> list[str]:
    """Check every entry; the names of those that fail."""
    from hipcad.runtime.imaging.isolation import DecodePool, IsolationLimits

    seeds = load_seeds(seeds_dir) if Path(seeds_dir).is_dir() else {}
    failed = []
    pool = DecodePool(1, IsolationLimits(timeout_s=timeout)) if decoder == "pool" else None
    try:
        with tempfile.TemporaryDirectory(prefix="hipcad-regress-") as tmp:
            for entry in json.loads(Path(corpus).read_text()):
                recipe = entry["recipe"]
                try:
                    path = rebuild(recipe, seeds, Path(tmp))
                except RecipeError as err:
                    got = {"outcome": "recipe error", "message": str(err)}
                else:
                    got = read_in_pool(pool, path, recipe.get("min_side")) if pool is not None \
                        else read_in_process(path, recipe.get("min_side"), timeout)
                ok = (got["outcome"] == entry["expect"] and got.get("seconds", 0) <= entry.get("max_seconds", MAX_SECONDS)
                      and got.get("peak_mb", 0) <= MAX_PEAK_MB)
                if not ok:
                    failed.append(entry["name"])
                echo(f"{'PASS' if ok else 'FAIL'} {entry['name']:32s} {json.dumps(got)[:150]}")
    finally:
        if pool is not None:
            pool.close()
    return failed


def signature(finding: dict) -> str:
    return "|".join(str(finding.get(k)) for k in ("kind", "type", "hipcad", "at"))


def add(findings: Path, corpus: Path = CORPUS) -> int:
    entries = json.loads(corpus.read_text()) if corpus.exists() else []
    known = {e.get("signature") for e in entries}
    added = 0
    for line in open(findings):
        finding = json.loads(line)
        if finding.get("slow") or finding["kind"] in ("ok", "rejected", "codec_panic"):
            continue
        sig = signature(finding)
        if sig in known:
            continue
        known.add(sig)
        recipe = finding["recipe"]
        entries.append({"name": f"{finding['kind']}-{recipe['run_seed']}-{recipe['index']}", "kind": finding["kind"],
                        "signature": sig, "expect": "refused",
                        "found": {k: finding[k] for k in ("type", "message", "at", "hipcad", "seconds") if k in finding},
                        "recipe": recipe})
        added += 1
    corpus.write_text(json.dumps(entries, indent=1) + "\n")
    return added


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.regress", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check")
    p_check.add_argument("--decoder", choices=("pool", "inprocess"), default="pool")
    p_write = sub.add_parser("write")
    p_write.add_argument("out")
    p_add = sub.add_parser("add")
    p_add.add_argument("findings")
    for p in (p_check, p_write, p_add):
        p.add_argument("--corpus", default=str(CORPUS))
        p.add_argument("--seeds", default=".cache/fuzz/seeds")
    args = parser.parse_args(argv)
    if args.command == "check":
        failed = check(args.decoder, args.seeds, Path(args.corpus))
        print(f"{'all passed' if not failed else str(len(failed)) + ' failed: ' + ', '.join(failed)}")
        return 1 if failed else 0
    if args.command == "write":
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        seeds = load_seeds(args.seeds)
        for entry in json.loads(Path(args.corpus).read_text()):
            rebuild(entry["recipe"], seeds, out).rename(out / f"{entry['name']}.bin")
        print(f"written to {out}")
        return 0
    print(f"{add(Path(args.findings), Path(args.corpus))} new signature(s) in {args.corpus}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
