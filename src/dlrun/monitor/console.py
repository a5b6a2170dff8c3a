"""The console log handler: rich on a terminal (lines print above the live progress bar),
plain one-line records elsewhere (CI logs, pipes), never wrapped at 80 columns."""

from __future__ import annotations

import logging
import sys


def console_handler() -> logging.Handler:
    from rich import get_console

    if get_console().is_terminal:
        from rich.logging import RichHandler

        return RichHandler(show_path=False, markup=False, log_time_format="[%X]")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S"))
    return handler
