"""Boxes in stored-pixel coordinates: fracture boxes, anatomical regions, heatmap cells."""

from __future__ import annotations

from typing import NamedTuple


class Box(NamedTuple):
    """A box in stored-pixel coordinates: (x0, y0) top-left, (x1, y1) bottom-right."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    def mirrored(self, image_width: float) -> "Box":
        """The same box after a left-right flip of an image ``image_width`` pixels wide."""
        return Box(image_width - self.x1, self.y0, image_width - self.x0, self.y1)

    def scaled(self, sx: float, sy: float | None = None) -> "Box":
        sy = sx if sy is None else sy
        return Box(self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy)

    def shifted(self, dx: float, dy: float) -> "Box":
        return Box(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy)

    def clipped(self, width: float, height: float) -> "Box":
        return Box(min(max(self.x0, 0.0), width), min(max(self.y0, 0.0), height),
                   min(max(self.x1, 0.0), width), min(max(self.y1, 0.0), height))

    def contains(self, other: "Box", tol: float = 0.0) -> bool:
        return (other.x0 >= self.x0 - tol and other.y0 >= self.y0 - tol
                and other.x1 <= self.x1 + tol and other.y1 <= self.y1 + tol)

    def intersection(self, other: "Box") -> float:
        w = min(self.x1, other.x1) - max(self.x0, other.x0)
        h = min(self.y1, other.y1) - max(self.y0, other.y0)
        return max(0.0, w) * max(0.0, h)
