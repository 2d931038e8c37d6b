"""The pieces every command's parser is made of: one-line usage errors, defaults worth
reading in `--help`, bounded integers, and the arguments several commands share."""

from __future__ import annotations

import argparse
from pathlib import Path


class Parser(argparse.ArgumentParser):
    """A usage error is one line too, with where to look for help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show each default worth reading (not an absent value, not an unset flag)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def int_at_least(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high], refused in one line otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            span = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {span}, not {value}")
        return value

    return parse


# -v is accepted before or after any subcommand: every parser knows it, and only the top
# one sets its default (SUPPRESS keeps a subparser from resetting it to False).
_VERBOSE = argparse.ArgumentParser(add_help=False)
_VERBOSE.add_argument(
    "-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
    help="debug logs, and the traceback of an error",
)  # fmt: skip


def command(parent, name: str, help: str, func=None, **defaults) -> argparse.ArgumentParser:
    """A subcommand of `parent` (a subparsers action) that runs `func(args)`."""
    sp = parent.add_parser(
        name, help=help, description=help, formatter_class=HelpFormatter, parents=[_VERBOSE]
    )
    if func is not None:
        sp.set_defaults(func=func, **defaults)
    return sp


def group(parent, name: str, help: str):
    """A subcommand that only holds subcommands (`ganpool run ...`)."""
    return command(parent, name, help).add_subparsers(
        dest=f"{name}_command", required=True, metavar="COMMAND"
    )


def db_arg(sp) -> None:
    sp.add_argument("--db", help="PostgreSQL URL (else $GANPOOL_DB, else libpq's PG* variables)")


def run_arg(sp) -> None:
    sp.add_argument("--run", help="run name (default: the newest run)")


def config_args(sp) -> None:
    sp.add_argument("--config", type=Path, help="TOML file with a [run] table")
    sp.add_argument("--preset", default="small", help="small (CPU, built-in faces) or dcgan64")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    sp.add_argument("--data", type=Path, help="image folder, for the `folder` dataset")
    sp.add_argument("--steps", type=int_at_least(1), help="stop after this many steps (max_steps)")


def where_args(sp) -> None:
    """Where students (or viewers) connect from: the address in their join strings."""
    sp.add_argument("--host", help="host they connect to (default: this connection's)")
    sp.add_argument("--port", type=int_at_least(1, 65535), help="port they connect to")
    sp.add_argument("--sslmode", help="e.g. verify-full (passed to their libpq)")
    sp.add_argument("--sslrootcert", help="CA file path on their machine")


def threads_arg(sp, default: int, low: int = 1, note: str = "") -> None:
    sp.add_argument(
        "--threads", type=int_at_least(low), default=default, help="torch threads" + note
    )
