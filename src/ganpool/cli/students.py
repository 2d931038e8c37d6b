"""`ganpool student ...` and `ganpool viewer ...`: the class's logins (instructor only)."""

from __future__ import annotations

import os
from pathlib import Path

from ganpool.cli.args import open_store, where
from ganpool.cli.parser import command, db_arg, group, where_args
from ganpool.errors import ConfigError


def cmd_student(args) -> int:
    from ganpool import students

    if args.student_command == "add" and bool(args.name) == bool(args.roster):
        raise ConfigError("student add takes a NAME, or --roster FILE for a whole class")
    _, store = open_store(args)
    wheel = None
    if args.student_command == "add" and args.wheel:
        from ganpool.distribution import find_wheel

        wheel = find_wheel(Path(args.wheel))  # before any login is created
    if args.student_command == "add" and args.roster:
        return _add_roster(args, store, wheel)
    if args.student_command == "reissue":
        join = students.reissue_student(store, args.name, **where(args))
        print(f"student {args.name!r} has a new join string (the old one no longer works):")
        print(f"\n  ganpool worker --join '{join}'\n")
    elif args.student_command == "add":
        from ganpool.distribution import install_and_join

        join = students.add_student(
            store, args.name, args.host, args.port, args.sslmode, args.sslrootcert
        )
        print(f"student {args.name!r} added. Give them this command (shown only once):")
        print(f"\n  {install_and_join(join, args.install, wheel)}\n")
        if not args.install:
            print("(they install ganpool first: --install URL|PATH prints that step too)")
    elif args.student_command == "list":
        logins = students.list_students(store)
        print(f"{'student':<24} {'state':<9} {'trust':>5} {'units':>6}  last seen")
        for s in logins:
            seen = s.last_seen.strftime("%Y-%m-%d %H:%M:%S") if s.last_seen else "never"
            state = "disabled" if s.disabled else "enabled"
            print(f"{s.name:<24} {state:<9} {s.trust:>5.2f} {s.units_applied:>6}  {seen}")
    else:
        action = {
            "disable": students.disable_student,
            "enable": students.enable_student,
            "remove": students.remove_student,
        }[args.student_command]
        ended = action(store, args.name)
        print(f"student {args.name!r}: {args.student_command}d")
        if args.student_command == "disable":
            print(f"  {ended} open session(s) ended")
    return 0


def _add_roster(args, store, wheel: Path | None) -> int:
    """A whole class from a roster: join strings, one per line, or the roster's CSV with
    `join` and `command` columns added (for a mail merge). Written with owner-only
    permissions: each line lets someone train as that student."""
    import csv
    import io

    from ganpool import students
    from ganpool.distribution import install_and_join

    columns, rows = students.read_roster(Path(args.roster))
    out = Path(args.out) if args.out else None
    if out is not None and (out.exists() or not out.parent.is_dir()):
        raise ConfigError(
            f"--out {out}: "
            + ("already exists" if out.exists() else "its folder does not exist")
            + " (join strings are secrets: ganpool never overwrites a file of them)"
        )
    joins = students.add_roster(store, rows, **where(args))
    text = io.StringIO()
    if columns:
        writer = csv.DictWriter(text, fieldnames=[*columns, "join", "command"])
        writer.writeheader()
        for row, join in zip(rows, joins, strict=True):
            command = install_and_join(join, args.install, wheel)
            writer.writerow(row | {"join": join, "command": command})
    else:
        text.writelines(f"{r['name']}\t{join}\n" for r, join in zip(rows, joins, strict=True))
    if out is None:
        print(text.getvalue(), end="")
        return 0
    with os.fdopen(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(text.getvalue())
    print(f"added {len(rows)} students; their join strings are in {out} (keep it private)")
    return 0


def cmd_viewer(args) -> int:
    from ganpool import students

    _, store = open_store(args)
    if args.viewer_command == "add":
        url = students.add_viewer(store, args.name, **where(args))
        print(f"viewer {args.name!r} added: a read-only login for the projector (shown once):")
        print(f"\n  ganpool dashboard --db '{url}'\n")
    else:
        students.remove_viewer(store, args.name)
        print(f"viewer {args.name!r} removed")
    return 0


def register_student(sub) -> None:
    st = group(sub, "student", "student logins (instructor only)")
    a = command(st, "add", "create a login and print its join string", cmd_student)
    a.add_argument("name", nargs="?", help="the student's name (or use --roster)")
    a.add_argument(
        "--roster", metavar="FILE", help="a whole class: one name per line, or a CSV with a "
        "`name` column (kept, with `join` and `command` added, for a mail merge)",
    )  # fmt: skip
    a.add_argument("--out", metavar="FILE", help="with --roster: write the join strings here")
    where_args(a)
    a.add_argument(
        "--install",
        default=os.environ.get("GANPOOL_INSTALL"),
        metavar="SOURCE",
        help="where students pip-install ganpool from: the dashboard's address (it serves "
        "the wheel), a wheel's URL or path, or a git URL (default: $GANPOOL_INSTALL)",
    )
    a.add_argument(
        "--wheel",
        default=os.environ.get("GANPOOL_WHEEL"),
        help="the wheel the dashboard serves (a file, or a folder like dist/): its SHA-256 "
        "goes into the install command, for pip to check (default: $GANPOOL_WHEEL)",
    )
    db_arg(a)
    r = command(st, "reissue", "a new join string for a student who lost theirs", cmd_student)
    r.add_argument("name")
    where_args(r)
    db_arg(r)
    for action in ("list", "disable", "enable", "remove"):
        a = command(st, action, f"{action} student logins", cmd_student)
        if action != "list":
            a.add_argument("name")
        db_arg(a)


def register_viewer(sub) -> None:
    vw = group(sub, "viewer", "read-only logins, for a projector or an assistant")
    va = command(vw, "add", "create a read-only login and print its URL", cmd_viewer)
    va.add_argument("name")
    where_args(va)
    db_arg(va)
    vr = command(vw, "remove", "drop a read-only login", cmd_viewer)
    vr.add_argument("name")
    db_arg(vr)
