"""The safety notice a model's output carries: the one source of that regulatory text.

Nothing in hipcad is cleared for clinical use. A bundle with random weights, or one trained on
synthetic phantoms, says so wherever its output appears (the command line, the overlay, the
kiosk, the DICOM results); the words come from here.
"""

from __future__ import annotations

from dataclasses import dataclass

NOT_FOR_CLINICAL_USE = "NOT FOR CLINICAL USE"


@dataclass(frozen=True)
class SafetyNotice:
    short: str  # "UNTRAINED MODEL" | "SYNTHETIC DEMO MODEL"
    detail: str  # why

    @property
    def banner(self) -> str:
        """The line on the overlay, the kiosk and the DICOM report."""
        return f"{self.short} ({self.detail}) - {NOT_FOR_CLINICAL_USE}"

    def label(self, name: str) -> str:
        """The model's name with the notice, wherever the model is named."""
        return f"{name} ({self.short}: {self.detail} - {NOT_FOR_CLINICAL_USE.lower()})"


UNTRAINED = SafetyNotice("UNTRAINED MODEL", "random weights, its output is meaningless")
SYNTHETIC_DEMO = SafetyNotice("SYNTHETIC DEMO MODEL", "trained on synthetic phantoms only")
# first: what an unverified manifest says about its training cannot be believed either
UNVERIFIED = SafetyNotice("UNVERIFIED MODEL BUNDLE", "not signed by a trusted key, loaded under the development override")


def safety_notice(trained: bool, synthetic_demo: bool, verified: bool = True) -> SafetyNotice | None:
    if not verified:
        return UNVERIFIED
    if not trained:
        return UNTRAINED
    if synthetic_demo:
        return SYNTHETIC_DEMO
    return None


def notice_for(model: dict) -> SafetyNotice | None:
    """The notice of a model described as a dict (``Bundle.describe()``, a result's ``model``)."""
    return safety_notice(bool(model.get("trained", True)), bool(model.get("synthetic_demo", False)),
                         bool(model.get("verified", True)))
