"""The one logging set-up of every hipcad command and service.

Commands log to stderr without timestamps (``WARNING``, or ``INFO`` with ``-v``); the services
(worker, kiosk) with timestamps at the configured level. Libraries that can quote file contents
or datasets in their log lines (pydicom, pynetdicom) are held at WARNING or above.
"""

from __future__ import annotations

import logging
import sys

COMMAND_FORMAT = "%(levelname)s %(name)s: %(message)s"
SERVICE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NOISY = ("watchdog", "PIL", "pynetdicom", "highdicom")


def level_of(name: str | int) -> int:
    if isinstance(name, int):
        return name
    return getattr(logging, str(name).upper(), logging.INFO)


def setup_logging(level: str | int = logging.WARNING, *, service: bool = False) -> None:
    """Configure the root logger once for this process."""
    level = level_of(level)
    logging.basicConfig(level=level, stream=sys.stderr, format=SERVICE_FORMAT if service else COMMAND_FORMAT)
    for noisy in NOISY:  # their INFO/DEBUG lines can quote datasets
        logging.getLogger(noisy).setLevel(max(logging.WARNING, level))


def command_logging(verbose: bool) -> None:
    setup_logging(logging.INFO if verbose else logging.WARNING)
