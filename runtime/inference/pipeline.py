"""One radiograph through the whole data path: decode -> split -> infer -> verdicts -> overlay."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from hipcad.runtime.backends.base import Backend
from hipcad.runtime.model.bundle import Bundle
from hipcad.runtime.imaging.decode import decode
from hipcad.runtime.errors import HipcadError
from hipcad.runtime.imaging.limits import DEFAULT_LIMITS, DecodeLimits
from hipcad.runtime.inference.overlay import MAX_SIDE, render, save_atomic
from hipcad.runtime.inference.verdict import side_results
from hipcad.runtime.inference.preprocess import Prepared, prepare
from hipcad.runtime.imaging.radiograph import Radiograph

log = logging.getLogger(__name__)


@dataclass
class Result:
    input: str
    ok: bool = False
    error: str | None = None
    sides: list[dict] = field(default_factory=list)
    overlay: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)  # DICOM identifiers and geometry, no patient identity
    model: dict = field(default_factory=dict)
    #: patient-identifying fields for display only; never serialised by to_json(), never logged
    patient: dict = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        return {
            "input": self.input,
            "ok": self.ok,
            "error": self.error,
            "sides": self.sides,
            "overlay": self.overlay,
            "timings_ms": self.timings_ms,
            "warnings": self.warnings,
            "metadata": self.metadata,
            "model": self.model,
        }


class Pipeline:
    def __init__(
        self,
        bundle: Bundle,
        backend: Backend,
        limits: DecodeLimits = DEFAULT_LIMITS,
        overlay_max_side: int = MAX_SIDE,
    ) -> None:
        self.bundle = bundle
        self.backend = backend
        self.limits = limits
        self.overlay_max_side = overlay_max_side
        self.threshold = bundle.threshold
        self.model_info = {
            "name": bundle.name,
            "label": bundle.label,
            "synthetic_demo": bundle.synthetic_demo,
            "trained": bundle.trained,
            "operating_point": bundle.operating_point,
            "threshold": self.threshold,
            "backend": backend.name,
            "device": backend.device,
            "precision": backend.precision,
        }
        self.min_decode_side = min_decode_side(bundle.input_hw, overlay_max_side)

    def decode(self, path: str | Path) -> Radiograph:
        return decode(path, self.limits, min_side=self.min_decode_side)

    def load(self, path: str | Path) -> "Loaded":
        """Decode and split one radiograph (the part that can run ahead of inference)."""
        loaded = Loaded(Result(input=str(path), model=self.model_info))
        start = time.perf_counter()
        timings = loaded.result.timings_ms
        try:
            loaded.radiograph = self.decode(path)
            timings["decode"], t = _ms(start), time.perf_counter()
            loaded.result.patient = loaded.radiograph.patient
            loaded.result.warnings.extend(loaded.radiograph.warnings)
            loaded.prepared = prepare(loaded.radiograph, self.bundle.input_hw)
            loaded.result.warnings.extend(loaded.prepared.notes)
            timings["preprocess"] = _ms(t)
        except Exception as err:
            loaded.result.error = _describe(err)
        loaded.seconds = time.perf_counter() - start
        return loaded

    def complete(self, loaded: "Loaded", overlay_path: Path | None = None) -> Result:
        """Inference, verdicts and overlay for a loaded radiograph."""
        result = loaded.result
        start = time.perf_counter()
        if result.error is None:
            try:
                self._infer(loaded, overlay_path)
                result.ok = True
            except Exception as err:
                result.error = _describe(err)
        result.timings_ms["total"] = round((loaded.seconds + time.perf_counter() - start) * 1000.0, 1)
        return result

    def run(self, path: str | Path, overlay_path: Path | None = None) -> Result:
        return self.complete(self.load(path), overlay_path)

    def run_many(self, jobs: Iterable[tuple[str | Path, Path | None]]) -> Iterator[Result]:
        """Results for (path, overlay_path) jobs in order, decoding the next radiograph on a second
        thread while the current one is inferred (the GIL is released in both)."""
        jobs = iter(jobs)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hipcad-decode") as pool:
            pending = None
            for path, overlay in jobs:
                future = pool.submit(self.load, path)
                if pending is not None:
                    yield self.complete(pending[0].result(), pending[1])
                pending = (future, overlay)
            if pending is not None:
                yield self.complete(pending[0].result(), pending[1])

    def _infer(self, loaded: "Loaded", overlay_path: Path | None) -> None:
        result, radiograph, prepared = loaded.result, loaded.radiograph, loaded.prepared
        t = time.perf_counter()
        logits, cam = self.backend.infer(prepared.batch)
        result.timings_ms["inference"], t = _ms(t), time.perf_counter()
        result.sides = side_results(prepared, logits, cam, self.threshold, radiograph.pixels.shape, radiograph.scale)
        result.metadata = {
            **{k: v for k, v in radiograph.metadata.items() if v is not None},
            "source_format": radiograph.source_format,
            "rows": radiograph.original_shape[0],
            "columns": radiograph.original_shape[1],
            "midline_x": round(prepared.midline_x / radiograph.scale, 1),
            "image_left_is_patient": prepared.image_left_is,
        }
        result.timings_ms["postprocess"], t = _ms(t), time.perf_counter()
        if overlay_path is not None:
            image = render(radiograph.pixels, prepared, cam, result.sides, self.banner, self.overlay_max_side)
            save_atomic(image, Path(overlay_path))
            result.overlay = str(overlay_path)
            result.timings_ms["overlay"] = _ms(t)

    @property
    def banner(self) -> str | None:
        if not self.bundle.trained:
            return "UNTRAINED MODEL (random weights) - output is meaningless - NOT FOR CLINICAL USE"
        if self.bundle.synthetic_demo:
            return "SYNTHETIC DEMO MODEL (trained on phantoms) - NOT FOR CLINICAL USE"
        return None


def min_decode_side(input_hw: tuple[int, int], overlay_max_side: int = MAX_SIDE) -> int:
    """Decoding need not keep more pixels than the model (two halves side by side) and the
    overlay can use; training and calibration decode the same way."""
    return max(overlay_max_side, 2 * max(input_hw))


@dataclass
class Loaded:
    result: Result
    radiograph: Radiograph | None = None
    prepared: Prepared | None = None
    seconds: float = 0.0


def _describe(err: Exception) -> str:
    """The user-facing message: a HipcadError's own words; anything else is a bug, said without a traceback."""
    if isinstance(err, HipcadError):
        return str(err)
    log.debug("internal error", exc_info=err)
    return f"internal error ({type(err).__name__}): {err}"


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000.0, 1)
