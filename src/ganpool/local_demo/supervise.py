"""Process supervision for `ganpool demo`: nothing it started may outlive it.

* Children (coordinator, workers) ask the kernel for SIGTERM when their parent dies
  (Linux `PR_SET_PDEATHSIG`), so a SIGKILLed demo still takes them down cleanly.
* A guardian process, in a session of its own, watches the demo's pid and stops the
  embedded server, and removes its data folder, when the demo is gone, however it went.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when its parent exits (no-op off Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start_guardian(pgdata: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ganpool.local_demo.supervise", str(os.getpid()), str(pgdata)],
        start_new_session=True,  # a Ctrl-C or a group kill aimed at the demo spares it
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def guard(parent: int, pgdata: Path) -> None:
    from ganpool.local_demo.embedded import EmbeddedPostgres

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while _alive(parent):
        time.sleep(0.3)
    server = EmbeddedPostgres(pgdata)
    server.stop(mode="immediate")
    server.destroy()  # each demo has a folder of its own: leave nothing behind in /tmp


if __name__ == "__main__":
    guard(int(sys.argv[1]), Path(sys.argv[2]))
