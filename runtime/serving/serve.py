"""``hipcad serve``: a bundle served by a CPU tritonserver (NVIDIA PyTriton's) for the boxes of a
region, where NVIDIA's Triton container is not run. Writes a ``python``-platform repository (ONNX
Runtime inside Triton's Python backend, dynamic batching on), starts tritonserver on it, says when it
is ready and runs until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from hipcad.runtime.errors import HipcadError
from hipcad.runtime.serving import repository
from hipcad.runtime.serving.server import Listen, ServerSetupError, TritonServer, find_installation


def main(argv: list[str] | None = None) -> int:
    from hipcad.runtime.model.bundle import load_bundle

    parser = argparse.ArgumentParser(
        prog="hipcad serve",
        description="Serve a bundle to the boxes of a region from a CPU tritonserver (the one in NVIDIA's "
        "nvidia-pytriton wheel; Python backend with ONNX Runtime, dynamic batching). Run it from a venv with "
        "`pip install 'hipcad[serve]'` (numpy<2), or point --server-env at one. Triton has no authentication: "
        "listen on a private network only, with --tls-cert/--tls-key (and --tls-client-ca for mutual TLS). "
        "Exit status 0 after SIGTERM/Ctrl-C, 1 when the server failed, 2 when it cannot run here.")
    parser.add_argument("bundle", nargs="?", help="model bundle folder (default: the bundled demo model)")
    parser.add_argument("--check", action="store_true", help="check the tritonserver installation and exit")
    parser.add_argument("--server-env", metavar="DIR", help="venv holding nvidia-pytriton (default: this hipcad's own)")
    parser.add_argument("--grpc-port", type=int, default=8001, metavar="P", help="default 8001")
    parser.add_argument("--http-port", type=int, default=8000, metavar="P", help="default 8000")
    parser.add_argument("--metrics-port", type=int, default=8002, metavar="P", help="Prometheus metrics (default 8002)")
    parser.add_argument("--bind", default="127.0.0.1", metavar="ADDR",
                        help="address for gRPC (default 127.0.0.1; the server's private-network address for boxes)")
    parser.add_argument("--http-bind", metavar="ADDR", help="address for HTTP and metrics (default: --bind; "
                        "127.0.0.1 with --tls-cert, since tritonserver has no HTTPS)")
    parser.add_argument("--tls-cert", metavar="PEM", help="gRPC TLS: the server's certificate")
    parser.add_argument("--tls-key", metavar="PEM", help="gRPC TLS: the server's private key")
    parser.add_argument("--tls-client-ca", metavar="PEM", help="mutual TLS: accept only clients with a certificate "
                        "signed by this CA")
    parser.add_argument("--repo", metavar="DIR", help="write the model repository here (default: a temporary folder)")
    repository.add_config_arguments(parser)
    parser.add_argument("--log-verbose", type=int, default=0, metavar="N", help="tritonserver's --log-verbose")
    parser.add_argument("--ready-timeout", type=float, default=120.0, metavar="S", help="default 120")
    args = parser.parse_args(argv)

    try:
        installation = find_installation(args.server_env)
        problems = installation.problems()
    except ServerSetupError as err:
        print(f"hipcad serve: {err}", file=sys.stderr)
        return 2
    if args.check or problems:
        for problem in problems:
            print(f"hipcad serve: {problem}", file=sys.stderr)
        if not problems:
            print(f"tritonserver of nvidia-pytriton {installation.packages['nvidia-pytriton']} in {installation.pytriton}; "
                  f"Python {installation.version} ({installation.libpython}), numpy {installation.packages['numpy']}, "
                  f"onnxruntime {installation.packages['onnxruntime']}: ready to serve")
        return 2 if problems else 0

    work = Path(tempfile.mkdtemp(prefix="hipcad-serve-"))
    server = None
    try:
        bundle = load_bundle(args.bundle)
        repo = Path(args.repo) if args.repo else work / "repository"
        model_dir = repository.write_repository(bundle, repo, "python", **repository.config_options(args))
        listen = Listen(args.grpc_port, args.http_port, args.metrics_port, args.bind, args.http_bind,
                        args.tls_cert, args.tls_key, args.tls_client_ca)
        server = TritonServer(installation, repo, work / "backends", listen, args.log_verbose).start()
        stopping = []

        def on_signal(signum, frame):  # forward only: waiting here would deadlock with the wait below
            stopping.append(signum)
            server.signal(signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        seconds = server.wait_ready(args.ready_timeout)
        print(f"serving {bundle.label} as {model_dir.name}: gRPC {listen.bind}:{listen.grpc_port}"
              f"{' (TLS' + (', client certificates required)' if listen.tls_client_ca else ')') if listen.tls_cert else ''}, "
              f"HTTP {listen.http_address}:{listen.http_port}, metrics {listen.http_address}:{listen.metrics_port}; "
              f"tritonserver pid {server.proc.pid}, ready in {seconds:.1f} s", flush=True)
        code = server.proc.wait()
    except HipcadError as err:
        print(f"hipcad serve: {err}", file=sys.stderr)
        if server is not None:
            server.stop()
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if stopping:
        print("hipcad serve: stopped", file=sys.stderr)
        return 0
    print(f"hipcad serve: tritonserver exited with status {code}", file=sys.stderr)
    return 1
