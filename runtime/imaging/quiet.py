"""Keeping pydicom and the codec plugins quiet while a file is decoded: their log records and
warnings quote element values read from the file (UIDs, names...), which must never reach a log.

:func:`quiet_decoding` withholds them for the calling thread; :func:`safe_reason` turns a library
exception into a one-line message that is safe to show and to log: it keeps the library's words
and blanks the patient-identifying values of the file being decoded (:func:`set_patient_values`).
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from contextlib import contextmanager
from typing import Iterator

import numpy as np

_state = threading.local()
# Loggers of pydicom and the codec plugins (filters on a logger do not see its children).
_QUIET_LOGGERS = (
    "pydicom",
    "pydicom.pixels.decoders.base",
    "pydicom.pixels.utils",
    "pydicom.pixels.processing",
    "pylibjpeg",
    "pylibjpeg.utils",
    "openjpeg",
    "openjpeg.utils",
    "jpeg_ls",
    "jpeg_ls._CharLS",
    "libjpeg",
    "rle",
    "py.warnings",
)


class _DropWhileDecoding(logging.Filter):
    """Drops records logged by this thread while it is inside :func:`decode_dicom`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_state, "depth", 0):
            _state.dropped = getattr(_state, "dropped", 0) + 1
            return False
        return True


_FILTER = _DropWhileDecoding()
for _name in _QUIET_LOGGERS:
    _logger = logging.getLogger(_name)
    if not any(isinstance(f, _DropWhileDecoding) for f in _logger.filters):
        _logger.addFilter(_FILTER)


# Python warnings filters are process-wide (before 3.14): one "ignore" filter is held for as
# long as any thread decodes (reference-counted, so that overlapping decodes in several threads
# cannot leave it installed or remove it early). Other threads' warnings are hidden meanwhile.
_warnings_lock = threading.Lock()
_warnings_users = 0
_warnings_cm: warnings.catch_warnings | None = None


def _warnings_off() -> None:
    global _warnings_users, _warnings_cm
    with _warnings_lock:
        if _warnings_users == 0:
            _warnings_cm = warnings.catch_warnings()
            _warnings_cm.__enter__()
            warnings.simplefilter("ignore")
        _warnings_users += 1


def _warnings_on() -> None:
    global _warnings_users, _warnings_cm
    with _warnings_lock:
        _warnings_users -= 1
        if _warnings_users == 0 and _warnings_cm is not None:
            _warnings_cm.__exit__(None, None, None)
            _warnings_cm = None


@contextmanager
def quiet_decoding() -> Iterator[None]:
    """Withhold pydicom's / the plugins' log records (this thread) and Python warnings."""
    if not getattr(_state, "depth", 0):
        _state.dropped = 0
        _state.phi = None
    _state.depth = getattr(_state, "depth", 0) + 1
    _warnings_off()
    try:
        with np.errstate(all="ignore"):
            yield
    finally:
        _warnings_on()
        _state.depth -= 1
        if not _state.depth:
            _state.phi = None  # the patient's values are not kept past the decode


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"-?[0-9][0-9.]{0,5}")  # short numbers (codes, lengths, tags); 8-digit ones may be dates
_ALL_PLUGINS_FAILED = "Unable to decode as exceptions were raised by all available plugins"

# Elements whose values identify the patient or the visit (the patient and study attributes of
# DICOM PS3.15 Annex E's Basic Application Level Confidentiality Profile that radiographs carry).
# Their values are blanked wherever a library message quotes them; everything else a library says
# (type names, keywords, UIDs, codec names, numbers) is kept, so that a message keeps its cause.
PHI_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "PatientBirthDate", "PatientBirthTime", "PatientAddress", "PatientTelephoneNumbers",
    "PatientAge", "PatientSize", "PatientWeight", "MedicalRecordLocator", "EthnicGroup", "Occupation",
    "AdditionalPatientHistory", "PatientComments", "AccessionNumber", "StudyID", "AdmissionID", "StudyDate",
    "StudyTime", "SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime",
    "ContentDate", "ContentTime", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "ReferringPhysicianName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "OperatorsName",
    "PhysiciansOfRecord", "RequestingPhysician", "StationName", "DeviceSerialNumber", "StudyDescription",
    "SeriesDescription", "RequestedProcedureDescription", "PerformedProcedureStepDescription", "ImageComments",
)  # fmt: skip


def set_patient_values(ds) -> None:
    """From now on (this thread, until the decode ends) :func:`safe_reason` blanks the values of
    ``ds``'s :data:`PHI_KEYWORDS` (and each name component) wherever they appear, and keeps other
    quoted text. ``None``: no header known, only library vocabulary is kept."""
    if ds is None:
        _state.phi = None
        return
    values: set[str] = set()
    for keyword in PHI_KEYWORDS:
        try:
            value = ds.get(keyword, None)
        except Exception:  # noqa: BLE001 - an unparseable value: nothing to match against
            continue
        if value is None:
            continue
        many = isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"
        for item in value if many else [value]:
            text = item.decode("latin-1", "replace") if isinstance(item, (bytes, bytearray)) else str(item)
            text = text.strip(" \x00")
            if len(text) >= 2:
                values.add(text)
                values.update(part.strip() for part in re.split(r"[\\^=]", text) if len(part.strip()) >= 3)
    _state.phi = frozenset(values)


_VOCABULARY: frozenset[str] | None = None


def _vocabulary() -> frozenset[str]:
    """Words a library quotes itself: DICOM keywords and element names, registered UIDs and their
    names, Python and pydicom type names, character set names."""
    global _VOCABULARY
    if _VOCABULARY is None:
        import builtins

        import pydicom.charset
        import pydicom.dataelem
        import pydicom.dataset
        import pydicom.multival
        import pydicom.sequence
        import pydicom.valuerep
        from pydicom.datadict import DicomDictionary
        from pydicom.uid import UID_dictionary

        words = {entry[2] for entry in DicomDictionary.values()} | {entry[4] for entry in DicomDictionary.values()}
        words |= {entry[0] for entry in UID_dictionary.values()} | set(UID_dictionary)
        words |= set(dir(builtins))
        for module in (pydicom.dataset, pydicom.dataelem, pydicom.multival, pydicom.sequence, pydicom.valuerep):
            words |= {name for name, value in vars(module).items() if isinstance(value, type)}
        words |= set(pydicom.charset.python_encoding) | set(pydicom.charset.python_encoding.values())
        _VOCABULARY = frozenset(w for w in words if w)
    return _VOCABULARY


def safe_reason(err: BaseException, limit: int = 240) -> str:
    """A one-line description of a library exception, safe to show and to log.

    Never a traceback; only printable characters are kept. Once the file's header is known
    (:func:`set_patient_values`), its patient-identifying values are replaced by '...' wherever
    they appear and other quoted text is kept; before that (a header that does not parse), only
    quoted text that a library writes itself (numbers, DICOM keywords, type names) is kept.
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(_ALL_PLUGINS_FAILED)]
    text = "; ".join(lines) if lines else type(err).__name__
    phi = getattr(_state, "phi", None)

    def quoted(m: re.Match) -> str:
        inner = m.group(0)[1:-1]
        if phi is None:
            keep = bool(_NUMBER.fullmatch(inner)) or inner in _vocabulary()
        else:
            keep = not any(value in inner for value in phi)
        return m.group(0) if keep else "'...'"

    text = _QUOTED.sub(quoted, text)
    for value in sorted(phi or (), key=len, reverse=True):  # unquoted occurrences too
        if len(value) >= 3:
            text = text.replace(value, "...")
    text = "".join(ch for ch in text if ch.isprintable())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def withheld_messages() -> int:
    """How many library log records the calling thread's last :func:`quiet_decoding` withheld."""
    return getattr(_state, "dropped", 0)
