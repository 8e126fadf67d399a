"""The DICOM grayscale display chain (PS3.4 Annex N) on decoded stored values: modality LUT /
rescale, VOI LUT or window, MONOCHROME1 inversion, 8 bits; colour and palette images to grey.

See :mod:`hipcad.runtime.imaging.dicom` for the scaling rules and the lookup-table speed-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hipcad.runtime.errors import BadInputError, HipcadError, InputTooLargeError
from hipcad.runtime.imaging.colour import colour_content
from hipcad.runtime.imaging.quiet import safe_reason

if TYPE_CHECKING:
    from hipcad.runtime.imaging.dicom_read import DicomPixels, ImageHeader


# Percentiles mapped to 0 and 255 when the file has neither VOI LUT nor window.
ROBUST_PERCENTILES = (0.5, 99.5)

GRAY = ("MONOCHROME1", "MONOCHROME2")


def _stored_domain(nbits: int, bits_stored: int, signed: bool, dtype: np.dtype) -> np.ndarray:
    """For every raw bit pattern of ``nbits`` (index), the stored value it means.

    Bits above Bits Stored are ignored (PS3.5 8.1.1); signed values are sign-extended.
    """
    raw = np.arange(1 << nbits, dtype=np.int64)
    bits = min(bits_stored, nbits)
    values = raw & ((1 << bits) - 1)
    if signed:
        sign = 1 << (bits - 1)
        values = (values ^ sign) - sign
    return values.astype(dtype)


def _lut_item(item, little_endian: bool, signed: bool) -> tuple[np.ndarray, int, int]:
    """(entries, first value mapped, declared bits per entry) of a Modality / VOI LUT item."""
    nr_entries, first_map, bits = (int(v) for v in item.LUTDescriptor)
    nr_entries = nr_entries or 65536
    if signed and first_map >= 1 << 15:  # SS for signed pixel data (PS3.3 C.11.1.1), read as US
        first_map -= 1 << 16
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):  # OW
        if bits <= 8 and len(data) in (nr_entries, nr_entries + 1):  # 8-bit entries packed in bytes
            entries = np.frombuffer(data, dtype=np.uint8)[:nr_entries]
        else:
            entries = np.frombuffer(data[: 2 * nr_entries], dtype="<u2" if little_endian else ">u2")
    else:  # US: one int or a MultiValue
        entries = np.asarray(list(data) if not isinstance(data, int) else [data], dtype=np.int64)[:nr_entries]
    if entries.size < nr_entries:
        raise ValueError("LUT Data is shorter than its LUT Descriptor says")
    if not (bits == 8 or 10 <= bits <= 16):
        raise ValueError("unsupported bits per LUT entry")
    return entries.astype(np.int64), first_map, bits


def _signed(ds) -> bool:
    return int(ds.get("PixelRepresentation", 0) or 0) == 1


def _apply_lut(values: np.ndarray, entries: np.ndarray, first_map: int) -> np.ndarray:
    """PS3.3 C.11.2.1.1: inputs below the first mapped value take the first entry, above the last.

    pydicom's ``apply_voi`` (3.0) holds the indices in the LUT's own dtype, so an 8-bit LUT with
    more than 256 entries wraps them; this does the same mapping with int64 indices.
    """
    if values.dtype.kind == "f":
        index = np.floor(np.nan_to_num(values, nan=first_map)) - first_map
    else:
        index = values.astype(np.int64) - first_map
    np.clip(index, 0, entries.size - 1, out=index)
    return entries[index.astype(np.int64)]


def _modality(values: np.ndarray, ds, little_endian: bool, warns: list[str]) -> np.ndarray:
    """Modality LUT Sequence (hipcad's own, see _apply_lut) or Rescale Slope/Intercept (pydicom's)."""
    from pydicom.pixels.processing import apply_modality_lut

    seq = ds.get("ModalityLUTSequence", None)
    if seq:
        try:
            entries, first_map, _ = _lut_item(seq[0], little_endian, _signed(ds))
            return _apply_lut(values, entries, first_map)
        except Exception:
            warns.append("the Modality LUT is invalid and was ignored")
            return values
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        try:
            ok = all(np.isfinite(float(ds[k].value)) for k in ("RescaleSlope", "RescaleIntercept"))
        except Exception:
            ok = False
        if not ok:
            raise BadInputError("invalid DICOM header: Rescale Slope / Rescale Intercept are not numbers")
    return apply_modality_lut(values, ds)


def _voi(m: np.ndarray, ds, little_endian: bool, warns: list[str]):
    """Apply the first VOI LUT (preferred) or the first window; returns (values, lo, hi) or None."""
    from pydicom.pixels.processing import apply_windowing

    seq = ds.get("VOILUTSequence", None)
    if seq:
        try:
            entries, first_map, declared_bits = _lut_item(seq[0], little_endian, _signed(ds))
            out = _apply_lut(m, entries, first_map)
            top = int(entries.max()) if entries.size else 0
            bits = min(declared_bits, max(8, top.bit_length()))
            return out, 0.0, float((1 << bits) - 1)
        except Exception:
            warns.append("the VOI LUT is invalid and was ignored")
    if ds.get("WindowCenter", None) is not None and ds.get("WindowWidth", None) is not None:
        try:
            out = apply_windowing(m, ds, 0)
            # The window's declared output range: its values for inputs -inf and +inf.
            lo, hi = apply_windowing(np.array([-np.inf, np.inf]), ds, 0)
            if np.isfinite(lo) and np.isfinite(hi) and lo != hi:
                return out, float(lo), float(hi)
            raise ValueError("degenerate window output range")
        except Exception:
            warns.append("the window center/width is invalid and was ignored")
    return None


def _robust_range(values: np.ndarray, counts: np.ndarray | None) -> tuple[float, float]:
    """The ROBUST_PERCENTILES of ``values`` (each weighted by ``counts`` when given)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if counts is None:  # the image itself (32-bit data): a partition, not a sort
        values = values[np.isfinite(values)]
        if values.size == 0:
            return 0.0, 0.0
        lo, hi = (float(v) for v in np.percentile(values, ROBUST_PERCENTILES, method="inverted_cdf"))
        return (lo, hi) if hi > lo else (float(values.min()), float(values.max()))
    present = (counts > 0) & np.isfinite(values)
    values, counts = values[present], counts[present]
    if values.size == 0:
        return 0.0, 0.0
    order = np.argsort(values, kind="stable")
    values = values[order]
    cum = np.cumsum(counts[order])
    total = cum[-1]
    p_lo, p_hi = ROBUST_PERCENTILES
    # "inverted CDF" percentile: the smallest value whose cumulative share reaches p.
    i_lo = min(int(np.searchsorted(cum, total * p_lo / 100.0, side="left")), values.size - 1)
    i_hi = min(int(np.searchsorted(cum, total * p_hi / 100.0, side="left")), values.size - 1)
    lo, hi = float(values[i_lo]), float(values[i_hi])
    if hi <= lo:
        lo, hi = float(values[0]), float(values[-1])
    return lo, hi


def _to_uint8(values: np.ndarray, lo: float, hi: float, invert: bool) -> np.ndarray:
    if not hi > lo:
        out = np.zeros(values.shape, dtype=np.uint8)
    else:
        v = np.asarray(values, dtype=np.float64 if values.size <= 65536 else np.float32)
        v = (v - v.dtype.type(lo)) * v.dtype.type(255.0 / (hi - lo))
        np.nan_to_num(v, copy=False, nan=0.0)
        np.clip(v, 0, 255, out=v)
        out = np.rint(v).astype(np.uint8)
    if invert:
        np.subtract(255, out, out=out)
    return out


def _gray_pipeline(values: np.ndarray, ds, little_endian: bool, warns: list[str], counts_fn) -> np.ndarray:
    """Modality -> VOI -> uint8 (-> MONOCHROME1 inversion) on ``values``."""
    m = _modality(values, ds, little_endian, warns)
    voi = _voi(m, ds, little_endian, warns)
    if voi is not None:
        v, lo, hi = voi
    else:
        v = m
        lo, hi = _robust_range(m, counts_fn())
    invert = str(ds.PhotometricInterpretation).strip().upper() == "MONOCHROME1"
    return _to_uint8(v, lo, hi, invert)


def _grayscale(stored: np.ndarray, ds, header: ImageHeader, little_endian: bool, warns: list[str]) -> np.ndarray:
    if stored.dtype.kind in "ui" and stored.dtype.itemsize <= 2:
        nbits = 8 * stored.dtype.itemsize
        index = np.ascontiguousarray(stored).view(np.dtype(f"u{stored.dtype.itemsize}"))
        domain = _stored_domain(nbits, header.bits_stored, bool(header.signed), stored.dtype)
        counts = lambda: np.bincount(index.ravel(), minlength=1 << nbits)  # noqa: E731
        table = _gray_pipeline(domain, ds, little_endian, warns, counts)
        return table[index]
    # Rare (32-bit data): the same functions on the image itself.
    return _gray_pipeline(stored, ds, little_endian, warns, lambda: None)


def _color(stored: np.ndarray, ds, header: ImageHeader, photometric: str, warns: list[str]) -> tuple[np.ndarray, dict]:
    """(grey uint8, colour statistics measured before the conversion)."""
    if photometric == "PALETTE COLOR":
        from pydicom.pixels.processing import apply_color_lut

        rgb = apply_color_lut(stored, ds)
        top = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind in "ui" else float(rgb.max() or 1)
    else:
        rgb = stored
        top = float((1 << min(header.bits_stored, 8 * stored.dtype.itemsize)) - 1)
    colour = colour_content(rgb, photometric, top=top)
    warns.append(f"color DICOM ({photometric}) converted to grayscale")
    if photometric.startswith("YBR"):  # not converted to RGB by the decoder: Y is the luminance
        gray = rgb[..., 0].astype(np.float32)
    else:
        gray = rgb[..., 0].astype(np.float32) * np.float32(0.299)
        gray += rgb[..., 1].astype(np.float32) * np.float32(0.587)
        gray += rgb[..., 2].astype(np.float32) * np.float32(0.114)
    return _to_uint8(gray, 0.0, top, invert=False), colour


def display_pixels(decoded: DicomPixels) -> tuple[np.ndarray, list[str], dict | None]:
    """The display pipeline on decoded stored values: returns (2-D uint8 with bone bright, warnings,
    colour statistics of a colour image measured before its grey conversion, else None)."""
    from pydicom.uid import UID

    warns: list[str] = []
    ds, stored, header = decoded.dataset, decoded.stored, decoded.header
    photometric = str(decoded.properties.get("photometric_interpretation", header.photometric)).strip().upper()
    colour = None
    try:
        if stored.ndim == 2:
            if photometric == "PALETTE COLOR":
                pixels, colour = _color(stored, ds, header, photometric, warns)
            else:
                little_endian = UID(str(decoded.transfer_syntax)).is_little_endian
                pixels = _grayscale(stored, ds, header, little_endian, warns)
        else:
            pixels, colour = _color(stored, ds, header, photometric, warns)
    except HipcadError:
        raise
    except MemoryError as err:
        raise InputTooLargeError("not enough memory to convert the pixel data") from err
    except Exception as err:
        raise BadInputError(f"cannot apply the DICOM grayscale pipeline: {safe_reason(err)}") from err
    return np.ascontiguousarray(pixels), warns, colour


