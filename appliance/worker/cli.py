"""``hipcad worker``: the box's reading service (hot folder, DICOM listener, results to PACS)."""

from __future__ import annotations

import argparse
import signal
import sys

from hipcad.appliance.config import Config, ConfigError, load_config, parse_destination
from hipcad.appliance.logs import setup_service_logging
from hipcad.appliance.worker.service import Worker


def ip_allow_dropin(config: Config) -> str:
    """``/etc/systemd/system/hipcad-worker.service.d/network.conf``: the unit lets in loopback only;
    this adds the modalities and PACS of the config (cgroup-BPF filtering, below the listener's own checks)."""
    import ipaddress

    allowed = list(config.dicom_allowed_hosts)
    for text in config.pacs_destinations:
        host = parse_destination(text)[1]
        try:
            allowed.append(str(ipaddress.ip_address(host)))
        except ValueError:
            raise ConfigError(f"pacs_destinations: {host!r} is a name; IPAddressAllow= needs addresses: write the "
                              "PACS address in pacs_destinations (its certificate must then name that address)") from None
    lines = ["# written by `hipcad worker --ip-allow-dropin` from " + config.source, "[Service]",
             "IPAddressAllow=localhost"]
    lines += [f"IPAddressAllow={address}" for address in dict.fromkeys(allowed)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hipcad worker",
        description="Watch a hot folder and read every complete radiograph once: durable queue and result store in "
        "DATA_DIR, one inference thread. Runs until SIGTERM (the current image is finished first).",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML configuration (see systemd/hipcad.toml.example); "
                        "every key can also be set as HIPCAD_<KEY> in the environment")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument("--ip-allow-dropin", action="store_true",
                        help="print a systemd drop-in for hipcad-worker.service that lets in only the configured "
                        "modalities (dicom_allowed_hosts) and PACS (pacs_destinations), then exit")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.ip_allow_dropin:
            print(ip_allow_dropin(config), end="")
            return 0
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
