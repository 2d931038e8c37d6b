"""Handing ganpool to students: the wheel the dashboard serves and the command they run."""

from __future__ import annotations

import hashlib
import shlex

import pytest

from ganpool import __version__
from ganpool.distribution import find_wheel, install_and_join, install_source, wheel_name
from ganpool.errors import GanpoolError

WHEEL = f"ganpool-{__version__}-py3-none-any.whl"
JOIN = "postgresql://ganpool_s_ann:p%24ss@db.example.edu:5432/cls?sslmode=verify-full"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("http://10.0.0.5:8000", f"http://10.0.0.5:8000/wheel/{WHEEL}"),  # a dashboard
        ("https://class.example.edu/", f"https://class.example.edu/wheel/{WHEEL}"),
        (f"http://h:8000/wheel/{WHEEL}", f"http://h:8000/wheel/{WHEEL}"),  # the wheel itself
        (
            "git+https://example.edu/class/ganpool.git@v1",
            "git+https://example.edu/class/ganpool.git@v1",
        ),
        ("/shared/ganpool.whl", "/shared/ganpool.whl"),
    ],
)
def test_install_source(source, expected):
    assert install_source(source) == expected


def test_one_command_installs_then_joins_and_survives_the_shell():
    line = install_and_join(JOIN, "http://10.0.0.5:8000")
    words = shlex.split(line)
    assert words[:3] == ["pip", "install", f"http://10.0.0.5:8000/wheel/{WHEEL}"]
    assert words[3:] == ["&&", "ganpool", "worker", "--join", JOIN]
    assert shlex.split(install_and_join(JOIN, "/a dir/g.whl"))[2] == "/a dir/g.whl"
    assert shlex.split(install_and_join(JOIN, "/it's/g.whl"))[2] == "/it's/g.whl"
    assert line.startswith(f"pip install 'http://10.0.0.5:8000/wheel/{WHEEL}' && ")
    assert install_and_join(JOIN, None) == f"ganpool worker --join '{JOIN}'"


def test_a_dashboard_address_carries_the_wheels_sha256(tmp_path):
    (tmp_path / WHEEL).write_bytes(b"PK")
    digest = hashlib.sha256(b"PK").hexdigest()
    line = install_and_join(JOIN, "http://10.0.0.5:8000/", find_wheel(tmp_path))
    assert shlex.split(line)[2] == f"http://10.0.0.5:8000/wheel/{WHEEL}#sha256={digest}"
    assert install_source("git+https://e.edu/g.git", tmp_path / WHEEL) == "git+https://e.edu/g.git"


def test_find_wheel_takes_this_versions_wheel_from_a_folder(tmp_path):
    (tmp_path / WHEEL).write_bytes(b"PK")
    assert find_wheel(tmp_path) == tmp_path / WHEEL
    assert find_wheel(tmp_path / WHEEL) == tmp_path / WHEEL
    assert wheel_name() == WHEEL


def test_find_wheel_refuses_what_students_could_not_use(tmp_path):
    with pytest.raises(GanpoolError, match="make wheel"):
        find_wheel(tmp_path)  # an empty folder
    old = tmp_path / "ganpool-0.0.1-py3-none-any.whl"
    old.write_bytes(b"PK")
    with pytest.raises(GanpoolError, match=r"is version 0\.0\.1, but this ganpool is"):
        find_wheel(old)
    other = tmp_path / f"numpy-{__version__}-py3-none-any.whl"
    other.write_bytes(b"PK")
    with pytest.raises(GanpoolError, match="is not a ganpool wheel"):
        find_wheel(other)
