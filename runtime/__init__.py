"""hipcad.runtime: what runs on the device.

Decoding, preprocessing, inference backends, verdicts and overlays. Never imports torch at
module level and never imports :mod:`hipcad.export`.
"""
