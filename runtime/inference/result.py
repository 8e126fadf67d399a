"""What reading one radiograph gives: the verdicts, the overlay, timings, and why it failed if it
did (the ``predict --json`` line, the worker's result record)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hipcad.runtime.inference.verdict import SideVerdict

if TYPE_CHECKING:
    from PIL import Image

#: why a read failed: the input (refused or unreadable: it is quarantined), the backend (a
#: run-time failure of the inference engine: the input is fine and is read again elsewhere), the
#: decoder (no decoding process could run it, e.g. the program is stopping: the input is kept), or
#: a bug (reported without a traceback; treated as the input's)
ERROR_KINDS = ("input", "backend", "decoder", "internal")


@dataclass
class Result:
    input: str
    ok: bool = False
    error: str | None = None
    error_kind: str | None = None  # one of ERROR_KINDS when ``error`` is set
    #: is the image what the model is for? (None when it could not be read); when not, no verdict
    eligible: bool | None = None
    eligibility: dict = field(default_factory=dict)  # {"reasons", "warnings", "checks"}
    sides: list[SideVerdict] = field(default_factory=list)
    overlay: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)  # DICOM identifiers and geometry, no patient identity
    model: dict = field(default_factory=dict)
    #: patient-identifying fields for display only; never serialised by to_json(), never logged
    patient: dict = field(default_factory=dict, repr=False)
    #: the radiograph alone at screen size (what read-first mode shows before the CAD); not serialised
    display: "Image.Image | None" = field(default=None, repr=False)
    #: the exception behind a backend failure, for the log; not serialised
    failure: BaseException | None = field(default=None, repr=False)

    def fail(self, kind: str, message: str, failure: BaseException | None = None) -> None:
        assert kind in ERROR_KINDS
        self.ok, self.error, self.error_kind, self.failure = False, message, kind, failure

    def to_json(self) -> dict:
        return {
            "input": self.input,
            "ok": self.ok,
            "error": self.error,
            "eligible": self.eligible,
            "eligibility": self.eligibility,
            "sides": [s.to_json() for s in self.sides],
            "overlay": self.overlay,
            "timings_ms": self.timings_ms,
            "warnings": self.warnings,
            "metadata": self.metadata,
            "model": self.model,
        }
