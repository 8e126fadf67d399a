"""Subset of pycuda/tools.py: make_default_context, clear_context_caches."""

from __future__ import annotations

from . import driver


def make_default_context(ctx_maker=None):
    """pycuda/tools.py: try each device in turn (the real one honours CUDA_DEVICE / ~/.cuda_device)."""
    if ctx_maker is None:
        def ctx_maker(dev):
            return dev.make_context()
    ndevices = driver.Device.count()
    if ndevices == 0:
        raise RuntimeError("No CUDA enabled device found. Please check your installation.")
    errors = []
    for i in range(ndevices):
        try:
            return ctx_maker(driver.Device(i))
        except driver.Error as err:
            errors.append(err)
    raise RuntimeError(f"make_default_context() wasn't able to create a context on any of the {ndevices} detected "
                       f"devices: {errors}")


def clear_context_caches():
    pass
