"""A hipcad bundle served by Triton's Python backend: ONNX Runtime on the bundle's ``model.onnx``.

``hipcad triton-repo --platform python`` copies this file into ``<model>/1/model.py`` beside
``model.onnx``; it runs inside tritonserver's Python backend stub (``hipcad serve``), not in hipcad.
It needs numpy<2 and onnxruntime in the server's Python environment.

Triton's dynamic batcher hands ``execute`` a list of requests (each with its own ``image``
[n_i, 1, H, W]); the Python backend does not merge them, so they are concatenated, run through ONNX
Runtime once, and the outputs split back per request.
"""

import hashlib
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

PREFIX = "hipcad."


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        if int(np.__version__.split(".")[0]) >= 2:
            # measured with the Python backend of Triton 2.51 (nvidia-pytriton 0.7): under numpy 2 the
            # responses reach the client with EMPTY output tensors and no error; refuse to load instead
            raise pb_utils.TritonModelException(f"numpy {np.__version__} in the server's Python environment: "
                                                "this model needs numpy<2")
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        with open(path, "rb") as fh:
            data = fh.read()
        actual = hashlib.sha256(data).hexdigest()
        expected = params.get(PREFIX + "onnx_sha256")
        if actual != expected:
            # the model fails to load (UNAVAILABLE) rather than serve a graph its identity does not name
            raise pb_utils.TritonModelException(f"{path}: sha256 {actual[:12]}... does not match the config's "
                                                f"{PREFIX}onnx_sha256 {str(expected)[:12]}...; not serving it")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        threads = int(params.get(PREFIX + "ort_threads") or 0)
        if threads > 0:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args["model_instance_device_id"])}))
        self.session = ort.InferenceSession(data, options, providers=providers)
        pb_utils.Logger.log_info(f"hipcad model {params.get(PREFIX + 'name')} (sha256 {actual[:12]}) on "
                                 f"{self.session.get_providers()[0]}, instance {args['model_instance_name']}")

    def execute(self, requests):
        images = [pb_utils.get_input_tensor_by_name(request, "image").as_numpy() for request in requests]
        try:
            batch = images[0] if len(images) == 1 else np.concatenate(images, axis=0)
            logits, cam = self.session.run(["logits", "cam"], {"image": np.ascontiguousarray(batch)})
        except Exception as err:  # every request of the failed batch gets the error
            error = pb_utils.TritonError(f"hipcad onnxruntime: {err}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for image in images:
            end = start + len(image)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("logits", np.ascontiguousarray(logits[start:end], dtype=np.float32)),
                pb_utils.Tensor("cam", np.ascontiguousarray(cam[start:end], dtype=np.float32)),
            ]))
            start = end
        return responses

    def finalize(self):
        self.session = None
