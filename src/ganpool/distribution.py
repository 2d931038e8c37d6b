"""How students get ganpool without a public package index.

The instructor builds a wheel (`make wheel` writes dist/ganpool-<version>-py3-none-any.whl),
`ganpool dashboard --wheel dist/` serves it at /wheel/<its file name>, and `ganpool student
add --install SOURCE` prints the one command a student runs: install, then join. SOURCE is
whatever pip accepts (a wheel's URL or path, a git URL), or the dashboard's address, which
stands for the wheel it serves (with its SHA-256 when `student add --wheel` names it too).
The wheel asks for any torch, so a student's CUDA build stays.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlsplit

from ganpool import __version__
from ganpool.errors import GanpoolError

WHEEL_ROUTE = "/wheel/"  # the dashboard serves the wheel under this path


def wheel_name(version: str = __version__) -> str:
    """The file name pip needs: it reads the version from it, so no alias will do."""
    return f"ganpool-{version}-py3-none-any.whl"


def find_wheel(path: Path) -> Path:
    """The wheel to hand out: a file, or a folder holding this version's wheel. Students
    run the instructor's version, so a wheel of another version is refused."""
    path = Path(path)
    wheel = path / wheel_name() if path.is_dir() else path
    if not wheel.is_file():
        raise GanpoolError(f"no wheel at {wheel}: build it with `make wheel` (writes dist/)")
    parts = wheel.name.split("-")
    if len(parts) != 5 or parts[0] != "ganpool" or wheel.suffix != ".whl":
        raise GanpoolError(f"{wheel.name} is not a ganpool wheel (ganpool-VERSION-…-any.whl)")
    if parts[1] != __version__:
        raise GanpoolError(
            f"{wheel.name} is version {parts[1]}, but this ganpool is {__version__}: "
            "rebuild it with `make wheel`"
        )
    return wheel


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def install_source(source: str, wheel: Path | None = None) -> str:
    """What goes after `pip install`: a dashboard's address becomes the wheel it serves,
    with the wheel's SHA-256 when we have the file: pip checks it, so the code a student
    runs cannot be changed on its way over the dashboard's plain HTTP."""
    url = urlsplit(source)
    if url.scheme in ("http", "https") and url.path in ("", "/"):
        address = f"{url.scheme}://{url.netloc}{WHEEL_ROUTE}{wheel_name()}"
        return address + (f"#sha256={sha256_of(wheel)}" if wheel else "")
    return source


def _quoted(word: str) -> str:
    """Always in single quotes: zsh, a Mac's shell, would expand an unquoted `?`."""
    return "'" + word.replace("'", "'\"'\"'") + "'"


def install_and_join(join: str, source: str | None, wheel: Path | None = None) -> str:
    """The one line a student pastes into a terminal (or a notebook cell, after a `!`)."""
    worker = f"ganpool worker --join {_quoted(join)}"
    if not source:
        return worker
    return f"pip install {_quoted(install_source(source, wheel))} && {worker}"
