"""The `ganpool` command. Errors a user can cause end in one line and a non-zero exit;
`-v` shows the traceback and debug logs.

Each module of this package holds a group of commands: the pieces of the parser they add
(`register...`) and their `cmd_*` functions, which parse, call the library and print.
"""

from __future__ import annotations

import logging
import sys

from ganpool.cli import data, db, results, runs, serve, students, training
from ganpool.cli.parser import HelpFormatter, Parser
from ganpool.errors import explain

# The commands, in the order `ganpool --help` lists them.
COMMANDS = (
    db.register,
    runs.register_run,
    training.register_coordinator,
    training.register_worker,
    students.register_student,
    students.register_viewer,
    runs.register_status,
    results.register_metrics,
    training.register_train_local,
    data.register,
    results.register_evaluate,
    results.register_export,
    results.register_sample,
    serve.register_dashboard,
    serve.register_demo,
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ganpool")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from ganpool import __version__

        return __version__


def build_parser() -> Parser:
    p = Parser(prog="ganpool", description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    # Its own -v, not the subcommands' parent's: parsers share a parent's actions, defaults
    # included.
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs, and tracebacks")
    p.add_argument("--version", action="version", version=f"ganpool {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    return p


def _setup_logging(verbose: bool) -> None:
    """Library modules log; the CLI shows their one-line news (a wait, a lost or regained
    database) at INFO, and everything, with module names, under -v."""
    if verbose:
        logging.basicConfig(
            level=logging.DEBUG, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
        return
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("ganpool").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.stores = []  # connections a command opened through open_store()
    _setup_logging(args.verbose)
    # The one place errors become a line: whatever a command raises, the person reads one
    # line saying what went wrong and gets a non-zero status; -v shows the traceback.
    try:
        return args.func(args)
    except (Exception, KeyboardInterrupt) as e:
        if args.verbose and not isinstance(e, KeyboardInterrupt):
            raise
        line, status = explain(e)
        print(f"ganpool: {line}", file=sys.stderr)
        return status
    finally:
        for store in args.stores:
            store.close()
