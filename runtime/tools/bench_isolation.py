"""What decoding in a separate process costs (:mod:`hipcad.runtime.imaging.isolation`), measured by
``hipcad bench``: the same files decoded in this process and through a warm decoding process,
interleaved, and the first decode after a process was replaced (a crash or a timeout)."""

from __future__ import annotations

import os
import signal
import statistics
import time
from pathlib import Path


def _ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def isolation_cost(inputs: dict[str, Path], min_side: int, repeats: int = 5) -> dict:
    from hipcad.runtime.imaging.isolation import DecodePool, InProcessDecoder
    from hipcad.runtime.imaging.limits import DEFAULT_LIMITS

    here = InProcessDecoder()
    per_input = {}
    with DecodePool(1) as pool:
        start_ms = _ms(pool.start)
        for name, path in inputs.items():
            here.decode(path, DEFAULT_LIMITS, min_side)  # caches, lazy imports
            pool.decode(path, DEFAULT_LIMITS, min_side)
            in_process, isolated = [], []
            for _ in range(repeats):
                in_process.append(_ms(lambda: here.decode(path, DEFAULT_LIMITS, min_side)))
                isolated.append(_ms(lambda: pool.decode(path, DEFAULT_LIMITS, min_side)))
            a, b = statistics.median(in_process), statistics.median(isolated)
            per_input[name] = {"in_process_ms": round(a, 1), "isolated_ms": round(b, 1), "overhead_ms": round(b - a, 1)}
        # a process killed (as after a crash): the next file waits for its replacement, if it is not ready yet
        first = next(iter(inputs.values()))
        for pid in pool.pids():
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
        replaced_ms = _ms(lambda: pool.decode(first, DEFAULT_LIMITS, min_side))
    overheads = [v["overhead_ms"] for v in per_input.values()]
    return {"per_input": per_input, "overhead_ms_median": round(statistics.median(overheads), 1),
            "overhead_ms_max": round(max(overheads), 1), "process_start_ms": round(start_ms, 1),
            "decode_after_a_kill_ms": round(replaced_ms, 1), "repeats": repeats}
