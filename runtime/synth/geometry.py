"""Small geometry helpers of the phantom generator (signed distances, all vectorised, float32)."""

from __future__ import annotations

import math

import numpy as np


def _rot(x: float, y: float, ang: float) -> tuple[float, float]:
    c, s = math.cos(ang), math.sin(ang)
    return c * x - s * y, s * x + c * y


def _seg(px, py, a, b, ra, rb):
    """Tapered capsule from a (radius ra) to b (radius rb): (approximate sdf, t along, qx, qy)."""
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    l2 = dx * dx + dy * dy
    t = ((px - ax) * dx + (py - ay) * dy) * (1.0 / l2)
    np.clip(t, 0.0, 1.0, out=t)
    qx = px - ax - t * dx
    qy = py - ay - t * dy
    d = np.sqrt(qx * qx + qy * qy)
    return d - (ra + (rb - ra) * t), t, qx, qy


def _circle(px, py, c, r):
    dx = px - c[0]
    dy = py - c[1]
    return np.sqrt(dx * dx + dy * dy) - r


def _ellipse(px, py, c, ax, ay, ang=0.0):
    """Approximate signed distance to a rotated ellipse (semi-axes ax, ay)."""
    ca, sa = math.cos(ang), math.sin(ang)
    x = px - c[0]
    y = py - c[1]
    qx = (ca * x + sa * y) * (1.0 / ax)
    qy = (-sa * x + ca * y) * (1.0 / ay)
    k0 = np.sqrt(qx * qx + qy * qy)
    k1 = np.sqrt((qx * (1.0 / ax)) ** 2 + (qy * (1.0 / ay)) ** 2) + 1e-6
    return k0 * (k0 - 1.0) / k1


def _rbox(px, py, c, hx, hy, r, ang=0.0):
    ca, sa = math.cos(ang), math.sin(ang)
    x = px - c[0]
    y = py - c[1]
    qx = np.abs(ca * x + sa * y) - (hx - r)
    qy = np.abs(-sa * x + ca * y) - (hy - r)
    out = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return out + np.minimum(np.maximum(qx, qy), 0) - r


def _smin(a, b, k):
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _band(dist, width):
    return np.exp(-((dist * (1.0 / width)) ** 2))


