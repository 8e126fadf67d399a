"""A recording fake of pycuda's ``pycuda.driver`` (no ``autoinit``: hipcad's CUDA thread owns the context).

See ``driver.py`` for what is modelled and the sources. ``tests/fakes`` goes first on sys.path
only for the tests that ask for it (the ``fake_gpu`` fixture in ``tests/conftest.py``; see ``tests/fakes/README.md``).
"""

VERSION = (2026, 1)
VERSION_STATUS = "fake"
VERSION_TEXT = "2026.1-fake"
