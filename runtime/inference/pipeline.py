"""One radiograph through the whole data path: decode -> split -> infer -> verdicts -> overlay."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from hipcad.runtime.backends.base import Backend
from hipcad.runtime.errors import BadInputError, DecoderUnavailableError, HipcadError
from hipcad.runtime.imaging.isolation import InProcessDecoder
from hipcad.runtime.imaging.limits import DEFAULT_LIMITS, DecodeLimits
from hipcad.runtime.imaging.radiograph import Radiograph
from hipcad.runtime.inference.eligibility import assess
from hipcad.runtime.inference.midline import Midline, midline_of
from hipcad.runtime.inference.overlay import MAX_SIDE, display_image, render, render_not_assessed, save_atomic
from hipcad.runtime.inference.preprocess import Prepared, prepare
from hipcad.runtime.inference.result import Result
from hipcad.runtime.inference.verdict import side_verdicts
from hipcad.runtime.model.bundle import Bundle

log = logging.getLogger(__name__)



class Pipeline:
    def __init__(
        self,
        bundle: Bundle,
        backend: Backend,
        limits: DecodeLimits = DEFAULT_LIMITS,
        overlay_max_side: int = MAX_SIDE,
        *,
        heatmap: str = "suspected",
        score_ineligible: bool = False,
        decoder=None,
    ) -> None:
        self.bundle = bundle
        #: decode(path, limits, min_side): in this process, or a DecodePool (imaging.isolation)
        self.decoder = decoder if decoder is not None else InProcessDecoder()
        self.backend = backend
        self.limits = limits
        self.overlay_max_side = overlay_max_side
        self.heatmap = heatmap  # the overlay's heatmap: on "suspected" hips or on "all"
        #: research only: score images the model is not for (they stay ``eligible: false``)
        self.score_ineligible = score_ineligible
        self.intended_use = bundle.intended_use
        self.threshold = bundle.threshold
        self.calibration = bundle.calibration
        notice = bundle.notice
        self.banner = notice.banner if notice else None
        self.model_info = {
            **bundle.identity(),
            "backend": backend.name,
            "device": backend.device,
            "precision": backend.precision,
        }
        self.min_decode_side = min_decode_side(bundle.input_hw, overlay_max_side)

    def decode(self, path: str | Path) -> Radiograph:
        return self.decoder.decode(path, self.limits, self.min_decode_side)

    def load(self, path: str | Path) -> "Loaded":
        """Decode, judge and split one radiograph (the part that can run ahead of inference)."""
        loaded = Loaded(Result(input=str(path), model=self.model_info))
        result = loaded.result
        start = time.perf_counter()
        timings = result.timings_ms
        try:
            radiograph = loaded.radiograph = self.decode(path)
            timings["decode"], t = _ms(start), time.perf_counter()
            result.patient = radiograph.patient
            result.warnings.extend(radiograph.warnings)
            midline = midline_of(radiograph.pixels)
            eligibility = assess(radiograph, self.intended_use, midline)
            result.eligible, result.eligibility = eligibility.eligible, eligibility.to_json()
            result.warnings.extend(eligibility.warnings)
            result.metadata = _metadata(radiograph, midline)
            timings["eligibility"], t = _ms(t), time.perf_counter()
            if midline is not None and (eligibility.eligible or self.score_ineligible):
                loaded.prepared = prepare(radiograph, self.bundle.input_hw, midline.x)
                result.warnings.extend(loaded.prepared.notes)
                timings["preprocess"] = _ms(t)
        except Exception as err:
            result.fail(*_input_failure(err))
        loaded.seconds = time.perf_counter() - start
        return loaded

    def complete(self, loaded: "Loaded", overlay_path: Path | None = None, overlay_all_path: Path | None = None) -> Result:
        """Inference, verdicts and overlay for a loaded radiograph; for one the model is not for,
        no inference: the answer is "not assessed" and why (and an overlay that says so).
        ``overlay_all_path``: also write the overlay with the heatmap on both hips."""
        result = loaded.result
        start = time.perf_counter()
        if result.error is None and loaded.prepared is None:
            self._not_assessed(loaded, overlay_path)
        elif result.error is None:
            self._infer(loaded, overlay_path, overlay_all_path)
        result.timings_ms["total"] = round((loaded.seconds + time.perf_counter() - start) * 1000.0, 1)
        return result

    def run(self, path: str | Path, overlay_path: Path | None = None, overlay_all_path: Path | None = None) -> Result:
        return self.complete(self.load(path), overlay_path, overlay_all_path)

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

    def _not_assessed(self, loaded: "Loaded", overlay_path: Path | None) -> None:
        result = loaded.result
        t = time.perf_counter()
        try:
            if overlay_path is not None:
                result.display = display_image(loaded.radiograph.pixels, self.overlay_max_side)
                save_atomic(render_not_assessed(result.display, result.eligibility["reasons"], self.banner), Path(overlay_path))
                result.overlay = str(overlay_path)
                result.timings_ms["overlay"] = _ms(t)
        except Exception as err:
            result.fail(*_input_failure(err))
            return
        result.ok = True

    def _infer(self, loaded: "Loaded", overlay_path: Path | None, overlay_all_path: Path | None) -> None:
        result, radiograph, prepared = loaded.result, loaded.radiograph, loaded.prepared
        t = time.perf_counter()
        try:
            logits, cam = self.backend.infer(prepared.batch)
        except BadInputError as err:
            result.fail("input", str(err))
            return
        except Exception as err:  # the engine failed, not the file: the caller may take another backend
            result.fail("backend", f"inference failed ({type(err).__name__}): {err}", err)
            return
        result.timings_ms["inference"], t = _ms(t), time.perf_counter()
        try:
            result.sides = side_verdicts(prepared, logits, cam, self.threshold, radiograph.pixels.shape, radiograph.scale,
                                         self.calibration)
            result.metadata["image_left_is_patient"] = prepared.image_left_is
            result.timings_ms["postprocess"], t = _ms(t), time.perf_counter()
            if overlay_path is not None:
                result.display = display_image(radiograph.pixels, self.overlay_max_side)
                cols = radiograph.pixels.shape[1]
                save_atomic(render(result.display, cols, prepared, cam, result.sides, self.banner, self.heatmap),
                            Path(overlay_path))
                result.overlay = str(overlay_path)
                if overlay_all_path is not None:
                    save_atomic(render(result.display, cols, prepared, cam, result.sides, self.banner, "all"),
                                Path(overlay_all_path))
                result.timings_ms["overlay"] = _ms(t)
        except Exception as err:
            result.fail(*_input_failure(err))
            return
        result.ok = True


def _metadata(radiograph: Radiograph, midline: Midline | None) -> dict:
    """What a result says about the image (DICOM identifiers, geometry, the midline in stored
    pixels); never patient identity."""
    metadata = {k: v for k, v in radiograph.metadata.items() if v is not None}
    metadata.update(source_format=radiograph.source_format, rows=radiograph.original_shape[0],
                    columns=radiograph.original_shape[1],
                    midline_x=round(midline.x / radiograph.scale, 1) if midline is not None else None,
                    midline_confidence=round(midline.confidence, 3) if midline is not None else None)
    return metadata


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


def _input_failure(err: Exception) -> tuple[str, str]:
    """(error kind, user-facing message): a HipcadError's own words; anything else is a bug, said
    without a traceback. A decoder that could not run is not the file's fault."""
    if isinstance(err, DecoderUnavailableError):
        return "decoder", str(err)
    if isinstance(err, HipcadError):
        return "input", str(err)
    log.debug("internal error", exc_info=err)
    return "internal", f"internal error ({type(err).__name__}): {err}"


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000.0, 1)
