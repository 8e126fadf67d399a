"""Deterministic, structure-aware mutations of radiograph files.

A mutant is fully named by a *recipe*: (seed file name, run seed, index). ``mutant(seeds, run_seed,
index)`` rebuilds the same bytes from the same seed corpus (``make_seeds.py`` is deterministic), so
the regression corpus is a list of recipes, never a folder of binary files. Any change here that
alters the bytes of a mutant breaks the recorded recipes (regress.py says which): keep it stable.

Mutators: bit flips, interesting bytes / 16- and 32-bit integers, insertions, deletions,
duplications, truncation, appended junk, splicing with another seed; DICOM-aware (the value of an
image-pixel element: Rows, Columns, Bits Allocated / Stored, High Bit, Pixel Representation, Samples
per Pixel, Planar Configuration, Number of Frames, Photometric Interpretation, LUT Descriptor; the
declared length of an element; the Transfer Syntax UID swapped for another one hipcad accepts);
JPEG-aware (SOF height / width / precision / components); PNG-aware (IHDR fields or a chunk's data,
with its CRC recomputed so that the mutation reaches the decoder).
"""

from __future__ import annotations

import hashlib
import random
import struct
import zlib
from pathlib import Path

INTERESTING_8 = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)
INTERESTING_16 = (0, 1, 2, 3, 7, 8, 9, 12, 15, 16, 17, 31, 32, 33, 63, 64, 255, 256, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
INTERESTING_32 = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)

# (group, element): kind of value
IMAGE_TAGS = {
    (0x0028, 0x0010): "US",  # Rows
    (0x0028, 0x0011): "US",  # Columns
    (0x0028, 0x0100): "US",  # Bits Allocated
    (0x0028, 0x0101): "US",  # Bits Stored
    (0x0028, 0x0102): "US",  # High Bit
    (0x0028, 0x0103): "US",  # Pixel Representation
    (0x0028, 0x0002): "US",  # Samples per Pixel
    (0x0028, 0x0006): "US",  # Planar Configuration
    (0x0028, 0x0008): "IS",  # Number of Frames
    (0x0028, 0x0004): "CS",  # Photometric Interpretation
    (0x0028, 0x3002): "US3",  # LUT Descriptor (in a Modality / VOI LUT item)
    (0x0028, 0x1101): "US3",  # Red Palette Color LUT Descriptor
    (0x0028, 0x1050): "DS",  # Window Center
    (0x0028, 0x1051): "DS",  # Window Width
    (0x0028, 0x1052): "DS",  # Rescale Intercept
    (0x0028, 0x1053): "DS",  # Rescale Slope
    (0x7FE0, 0x0010): "LEN",  # Pixel Data: its length
}
PHOTOMETRIC = (b"MONOCHROME1", b"MONOCHROME2", b"RGB", b"PALETTE COLOR", b"YBR_FULL", b"YBR_FULL_422", b"YBR_ICT",
               b"YBR_RCT", b"", b"X")
TRANSFER_SYNTAXES = (b"1.2.840.10008.1.2", b"1.2.840.10008.1.2.1", b"1.2.840.10008.1.2.1.99", b"1.2.840.10008.1.2.2",
                     b"1.2.840.10008.1.2.4.50", b"1.2.840.10008.1.2.4.51", b"1.2.840.10008.1.2.4.57",
                     b"1.2.840.10008.1.2.4.70", b"1.2.840.10008.1.2.4.80", b"1.2.840.10008.1.2.4.81",
                     b"1.2.840.10008.1.2.4.90", b"1.2.840.10008.1.2.4.91", b"1.2.840.10008.1.2.5")
NUMBERS = (b"0", b"1", b"-1", b"2", b"65535", b"4294967296", b"1e308", b"-1e308", b"nan", b"inf", b"1\\2\\3", b"",
           b"0.0", b"99999999999999999999")


def _find_all(data: bytes, needle: bytes) -> list[int]:
    out, i = [], data.find(needle)
    while i >= 0 and len(out) < 64:
        out.append(i)
        i = data.find(needle, i + 1)
    return out


def _even(value: bytes, pad: bytes = b" ") -> bytes:
    return value + pad if len(value) % 2 else value


# -- generic ----------------------------------------------------------------------------------------
def flip_bits(rng, data, seeds):
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def set_bytes(rng, data, seeds):
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        b[rng.randrange(len(b))] = rng.choice(INTERESTING_8) if rng.random() < 0.7 else rng.randrange(256)
    return bytes(b)


def set_int(rng, data, seeds):
    width = rng.choice((2, 4))
    if len(data) < width:
        return data
    i = rng.randrange(len(data) - width + 1)
    value = rng.choice(INTERESTING_16 if width == 2 else INTERESTING_32)
    fmt = ("<" if rng.random() < 0.7 else ">") + ("H" if width == 2 else "I")
    return data[:i] + struct.pack(fmt, value) + data[i + width:]


def insert_bytes(rng, data, seeds):
    i = rng.randrange(len(data) + 1)
    chunk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) if rng.random() < 0.5 else \
        bytes([rng.choice(INTERESTING_8)]) * rng.randint(1, 512)
    return data[:i] + chunk + data[i:]


def delete_range(rng, data, seeds):
    i = rng.randrange(len(data))
    n = rng.randint(1, max(1, min(len(data) - i, rng.choice((1, 4, 16, 256, 4096)))))
    return data[:i] + data[i + n:]


def duplicate_range(rng, data, seeds):
    i = rng.randrange(len(data))
    n = rng.randint(1, max(1, min(len(data) - i, 1024)))
    j = rng.randrange(len(data) + 1)
    return data[:j] + data[i:i + n] + data[j:]


def truncate(rng, data, seeds):
    return data[: rng.randrange(1, len(data))] if len(data) > 1 else data


def append_junk(rng, data, seeds):
    return data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 4096)))


def splice(rng, data, seeds):
    other = seeds[rng.choice(sorted(seeds))]
    i, j = rng.randrange(len(data)), rng.randrange(len(other))
    return data[:i] + other[j:]


# -- DICOM-aware -------------------------------------------------------------------------------------
def dicom_element(rng, data, seeds):
    """Change the value of an image-pixel element found in the bytes (explicit or implicit VR LE)."""
    candidates = []
    for (group, elem), kind in IMAGE_TAGS.items():
        tag = struct.pack("<HH", group, elem)
        for pos in _find_all(data, tag):
            candidates.append((pos, kind))
    if not candidates:
        return set_int(rng, data, seeds)
    pos, kind = rng.choice(candidates)
    vr = data[pos + 4:pos + 6]
    explicit = vr.isalpha() and vr.isupper()
    if explicit and vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"OD", b"OL", b"UC", b"UR", b"OV"):
        head, length_fmt = 12, "<I"
        length_at = pos + 8
    elif explicit:
        head, length_fmt = 8, "<H"
        length_at = pos + 6
    else:
        head, length_fmt = 8, "<I"
        length_at = pos + 4
    if length_at + struct.calcsize(length_fmt) > len(data):
        return data
    (length,) = struct.unpack_from(length_fmt, data, length_at)
    value_at = pos + head
    if kind == "LEN" or rng.random() < 0.1:  # the declared length itself
        new_len = rng.choice(INTERESTING_32 if length_fmt == "<I" else INTERESTING_16)
        new_len = new_len & (0xFFFFFFFF if length_fmt == "<I" else 0xFFFF)
        if rng.random() < 0.5:
            new_len = max(0, length + rng.choice((-2, -1, 1, 2, 8, -8)))
        return data[:length_at] + struct.pack(length_fmt, new_len & (0xFFFFFFFF if length_fmt == "<I" else 0xFFFF)) \
            + data[length_at + struct.calcsize(length_fmt):]
    if length == 0xFFFFFFFF or value_at + length > len(data):
        return data
    if kind in ("US", "US3"):
        count = max(1, length // 2)
        k = rng.randrange(count)
        value = rng.choice(INTERESTING_16) if rng.random() < 0.8 else rng.randrange(65536)
        at = value_at + 2 * k
        return data[:at] + struct.pack("<H", value) + data[at + 2:]
    if kind == "CS":
        new = _even(rng.choice(PHOTOMETRIC))
    else:  # IS / DS strings
        new = _even(rng.choice(NUMBERS))
    if length_fmt == "<H" and len(new) > 0xFFFF:
        return data
    return data[:length_at] + struct.pack(length_fmt, len(new)) + data[length_at + struct.calcsize(length_fmt):value_at] \
        + new + data[value_at + length:]


def dicom_transfer_syntax(rng, data, seeds):
    """Swap the Transfer Syntax UID (0002,0010) for another, keeping the element well-formed."""
    tag = struct.pack("<HH", 0x0002, 0x0010) + b"UI"
    pos = data.find(tag)
    if pos < 0 or pos + 8 > len(data):
        return dicom_element(rng, data, seeds)
    (length,) = struct.unpack_from("<H", data, pos + 6)
    new = _even(rng.choice(TRANSFER_SYNTAXES), b"\0")
    return data[:pos + 6] + struct.pack("<H", len(new)) + new + data[pos + 8 + length:]


# -- JPEG / PNG-aware ----------------------------------------------------------------------------------
def jpeg_sof(rng, data, seeds):
    """Change a field of a JPEG start-of-frame segment (also inside encapsulated DICOM pixel data)."""
    spots = []
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2", b"\xff\xc3", b"\xff\xf7"):  # SOF0-3, JPEG-LS SOF55
        spots += _find_all(data, marker)
    if not spots:
        return flip_bits(rng, data, seeds)
    pos = rng.choice(spots)
    # FFCx, Lf(2), P(1), Y(2), X(2), Nf(1)
    field = rng.choice(("P", "Y", "X", "Nf", "Lf"))
    off, width = {"Lf": (2, 2), "P": (4, 1), "Y": (5, 2), "X": (7, 2), "Nf": (9, 1)}[field]
    at = pos + off
    if at + width > len(data):
        return data
    value = rng.choice(INTERESTING_16) if width == 2 else rng.choice((0, 1, 2, 3, 4, 7, 8, 12, 16, 17, 255))
    return data[:at] + value.to_bytes(width, "big") + data[at + width:]


def png_chunk(rng, data, seeds):
    """Change IHDR fields or bytes of another chunk and fix the CRC, so that zlib / the PNG reader see it."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return flip_bits(rng, data, seeds)
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        length = struct.unpack_from(">I", data, pos)[0]
        if pos + 12 + length > len(data):
            break
        chunks.append((pos, length, data[pos + 4:pos + 8]))
        pos += 12 + length
    if not chunks:
        return data
    pos, length, ctype = rng.choice(chunks)
    body = bytearray(data[pos + 8:pos + 8 + length])
    if ctype == b"IHDR" and length == 13:
        field = rng.randrange(5)
        if field == 0:
            body[0:4] = struct.pack(">I", rng.choice(INTERESTING_32 + (1, 2, 3, 100000)))
        elif field == 1:
            body[4:8] = struct.pack(">I", rng.choice(INTERESTING_32 + (1, 2, 3, 100000)))
        elif field == 2:
            body[8] = rng.choice((1, 2, 4, 8, 16, 0, 3, 32))
        elif field == 3:
            body[9] = rng.choice((0, 2, 3, 4, 6, 1, 5, 7))
        else:
            body[10 + rng.randrange(3)] = rng.choice((0, 1, 2))
    elif body:
        for _ in range(rng.randint(1, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)
    crc = zlib.crc32(ctype + bytes(body)) & 0xFFFFFFFF
    return data[:pos + 8] + bytes(body) + struct.pack(">I", crc) + data[pos + 12 + length:]


MUTATORS = (
    (flip_bits, 10), (set_bytes, 8), (set_int, 8), (insert_bytes, 4), (delete_range, 4), (duplicate_range, 3),
    (truncate, 3), (append_junk, 2), (splice, 2), (dicom_element, 20), (dicom_transfer_syntax, 5), (jpeg_sof, 6),
    (png_chunk, 6),
)
_NAMES = [m.__name__ for m, _ in MUTATORS]
_WEIGHTS = [w for _, w in MUTATORS]


def load_seeds(folder: str | Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file() and not p.name.startswith(".")}


def rng_for(run_seed: int, index: int) -> random.Random:
    digest = hashlib.sha256(f"hipcad-fuzz:{run_seed}:{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def mutant(seeds: dict[str, bytes], run_seed: int, index: int) -> tuple[bytes, dict]:
    """The bytes of mutant ``index`` of run ``run_seed``, and its recipe (what was done)."""
    rng = rng_for(run_seed, index)
    name = rng.choice(sorted(seeds))
    data = seeds[name]
    steps = []
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        fn = rng.choices(MUTATORS, weights=_WEIGHTS)[0][0]
        if len(data) < 2:
            break
        try:
            data = fn(rng, data, seeds)
        except (struct.error, IndexError, ValueError, OverflowError):  # a mutator's own bounds slip: skip it
            steps.append(fn.__name__ + "(skipped)")
            continue
        steps.append(fn.__name__)
    min_side = rng.choice((None, None, 16, 24, 32))
    recipe = {"seed_file": name, "seed_sha256": hashlib.sha256(seeds[name]).hexdigest()[:16], "run_seed": run_seed,
              "index": index, "steps": steps, "min_side": min_side,
              "sha256": hashlib.sha256(data).hexdigest()[:16], "size": len(data)}
    return data, recipe
