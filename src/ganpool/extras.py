"""The optional parts of ganpool and the extra that installs each.

A student's plain `pip install` holds what a worker needs (torch, numpy, Pillow, psycopg,
safetensors). Everything else is imported only where it is used, through `require`, so a
command that needs a missing part fails in one line that names the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ganpool.errors import GanpoolError


class MissingExtra(GanpoolError):
    """An optional dependency is not installed."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import `module`, or fail with `what needs ...: pip install 'ganpool[extra]'`."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        message = f"{what} needs the {extra} extra: pip install 'ganpool[{extra}]'"
        raise MissingExtra(message) from None
