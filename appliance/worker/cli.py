"""``hipcad worker``: the box's reading service (hot folder, DICOM listener, results to PACS)."""

from __future__ import annotations

import argparse
import signal
import sys

from hipcad.appliance.config import ConfigError, load_config
from hipcad.appliance.logs import setup_service_logging
from hipcad.appliance.worker.service import Worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hipcad worker",
        description="Watch a hot folder and read every complete radiograph once: durable queue and result store in "
        "DATA_DIR, one inference thread. Runs until SIGTERM (the current image is finished first).",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML configuration (see systemd/hipcad.toml.example); "
                        "every key can also be set as HIPCAD_<KEY> in the environment")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"hipcad worker: {err}", file=sys.stderr)
        return 2
    setup_service_logging("DEBUG" if args.verbose else config.log_level)
    worker = Worker(config)

    def on_signal(signum, frame):
        worker.signalled = signum  # no lock, no logging here: see Worker.signalled

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
