"""The small rules the CLI's promises rest on: one line per error, one line per wait, one
measure of speed, one meaning of "step"."""

from __future__ import annotations

import logging

import psycopg
import pytest

from ganpool.cli import build_parser
from ganpool.errors import ConfigError, explain
from ganpool.notices import Notice
from ganpool.settings import load_run_config
from ganpool.throughput import RecentImages, images_per_s


@pytest.mark.parametrize(
    ("error", "starts", "status"),
    [
        (ConfigError("bad\nsecond line"), "error: bad", 2),
        (psycopg.errors.InsufficientPrivilege("permission denied for table runs"), "refused", 2),
        (psycopg.OperationalError("server closed the connection\nmore"), "database error", 3),
        (FileNotFoundError(2, "No such file or directory", "x.png"), "error: x.png: No such", 2),
        (KeyboardInterrupt(), "interrupted", 130),
        (TypeError("unsupported format string"), "internal error: TypeError", 1),
    ],
)
def test_every_error_becomes_one_line_and_a_status(error, starts, status):
    line, code = explain(error)
    assert line.startswith(starts) and "\n" not in line and code == status


def test_verbose_is_accepted_before_and_after_the_subcommand():
    parser = build_parser()
    assert parser.parse_args(["-v", "status"]).verbose is True
    assert parser.parse_args(["status", "-v"]).verbose is True
    assert parser.parse_args(["run", "list", "--verbose"]).verbose is True
    assert parser.parse_args(["status"]).verbose is False


@pytest.mark.parametrize(
    "argv",
    [
        ["worker", "--threads", "-1"],
        ["coordinator", "--threads", "0"],
        ["evaluate", "--n", "1"],
        ["sample", "--model", "m", "--n", "2000"],
        ["dashboard", "--port", "70000"],
        ["demo", "--workers", "0"],
    ],
)
def test_out_of_range_numbers_are_refused_in_one_line(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "must be" in err


def test_a_state_is_said_once_and_its_end_once(caplog):
    caplog.set_level(logging.INFO)
    notice = Notice(logging.getLogger("t"))
    for _ in range(20):
        notice.set("paused", "paused now", ended="running again")
    notice.clear()
    notice.clear()
    assert [r.getMessage() for r in caplog.records] == ["paused now", "running again"]


def test_images_per_second_counts_the_last_minute():
    assert images_per_s(100, 0) == 0.0
    recent = RecentImages(window_s=60)
    recent.started = 0.0
    recent.add(500, now=10.0)
    recent.add(500, now=30.0)
    assert recent.rate(now=40.0) == pytest.approx(1000 / 40)  # running for 40 s so far
    assert recent.rate(now=80.0) == pytest.approx(500 / 60)  # the first 500 left the window


def test_a_step_is_the_papers_under_both_rules():
    alternating = load_run_config(overrides={"update_rule": "alternating"})
    simultaneous = load_run_config(overrides={"update_rule": "simultaneous"})
    assert [alternating.steps_of(v) for v in (-1, 0, 1, 2, 119, 120)] == [0, 0, 0, 1, 59, 60]
    assert [simultaneous.steps_of(v) for v in (-1, 0, 1, 60)] == [0, 0, 1, 60]
