"""Limits that protect the box from absurd inputs (decompression bombs, huge files)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecodeLimits:
    # The largest radiographs of the paper are 4892 x 4020 (20 MP); 64 MP leaves room for
    # full-field detectors and still refuses a bomb before a single pixel is decoded.
    max_pixels: int = 64_000_000
    max_side: int = 16_384
    max_file_bytes: int = 512 * 1024 * 1024

    def check_file_size(self, nbytes: int) -> None:
        from hipcad.runtime.errors import InputTooLargeError

        if nbytes > self.max_file_bytes:
            raise InputTooLargeError(
                f"file is {nbytes / 2**20:.0f} MiB, over the limit of {self.max_file_bytes / 2**20:.0f} MiB"
            )

    def check_dimensions(self, rows: int, cols: int, frames: int = 1, samples: int = 1) -> None:
        """Refuse a declared image size before decoding it."""
        from hipcad.runtime.errors import BadInputError, InputTooLargeError

        if rows <= 0 or cols <= 0:
            raise BadInputError(f"image declares an empty size ({cols} x {rows})")
        if rows > self.max_side or cols > self.max_side:
            raise InputTooLargeError(
                f"image declares {cols} x {rows} pixels; the largest side allowed is {self.max_side}"
            )
        total = rows * cols * max(frames, 1) * max(samples, 1)
        if total > self.max_pixels:
            raise InputTooLargeError(
                f"image declares {total / 1e6:.0f} megapixels ({cols} x {rows} x {frames} frame(s) x "
                f"{samples} sample(s)); the limit is {self.max_pixels / 1e6:.0f}"
            )


DEFAULT_LIMITS = DecodeLimits()
