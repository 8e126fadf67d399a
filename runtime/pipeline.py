"""One radiograph through the whole data path: decode -> split -> infer -> verdicts -> overlay."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .backends.base import Backend
from .bundle import Bundle
from .decode import decode
from .errors import HipcadError
from .limits import DEFAULT_LIMITS, DecodeLimits
from .overlay import MAX_SIDE, render, save_atomic
from .postprocess import side_results
from .preprocess import prepare
from .radiograph import Radiograph

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
        # decoding need not keep more pixels than the model and the overlay can use
        self.min_decode_side = max(overlay_max_side, 2 * max(bundle.input_hw))

    def decode(self, path: str | Path) -> Radiograph:
        return decode(path, self.limits, min_side=self.min_decode_side)

    def run(self, path: str | Path, overlay_path: Path | None = None) -> Result:
        result = Result(input=str(path), model=self.model_info)
        start = time.perf_counter()
        try:
            self._run(path, overlay_path, result, start)
            result.ok = True
        except HipcadError as err:
            result.error = str(err)
        except Exception as err:  # a bug, not bad input: report it without a traceback
            log.debug("internal error", exc_info=True)
            result.error = f"internal error ({type(err).__name__}): {err}"
        result.timings_ms["total"] = _ms(start)
        return result

    def _run(self, path, overlay_path, result: Result, start: float) -> None:
        t = start
        radiograph = self.decode(path)
        result.timings_ms["decode"], t = _ms(t), time.perf_counter()
        result.patient = radiograph.patient
        result.warnings.extend(radiograph.warnings)
        prepared = prepare(radiograph, self.bundle.input_hw)
        result.warnings.extend(prepared.notes)
        result.timings_ms["preprocess"], t = _ms(t), time.perf_counter()
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


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000.0, 1)
