"""Serving a bundle from a Triton Inference Server (workstation / regional-server side):
:mod:`.repository` writes and validates a Triton model repository (``hipcad triton-repo``),
:mod:`.server` finds and runs the ``tritonserver`` of NVIDIA's PyTriton wheel, :mod:`.serve` is
``hipcad serve``. ``triton_python/model.py`` is the Python-backend model copied into repositories
(it runs inside the server, not in hipcad). The client side is the runtime's ``triton`` backend."""
