"""Mutation testing, one module at a time: `make mutation MODULE=name` runs this.

    python tools/mutation.py aggregation          # mutate, test, report
    python tools/mutation.py coordinator --jobs 2
    python tools/mutation.py aggregation --report # the report only, from the saved verdicts
    python tools/mutation.py aggregation --survivors  # after adding tests: retry survivors
    python tools/mutation.py coordinator --only issue_units --only Round.play  # some functions

Each module ([tool.mutmut.modules] in pyproject.toml) names its files, the fast tests that
cover them and, optionally, which functions to mutate. mutmut reads one configuration per
folder, so each module gets its own: .mutation/<module>/ holds a copy of src/ and tests/ and
a pyproject.toml whose [tool.mutmut] is the shared settings plus the module's. Its verdicts
stay there (in mutants/), so a rerun only tries mutants without one, and two modules can run
side by side. The report, .mutation/<module>/report.md, lists every mutant not killed with
its diff.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = str(Path(sys.executable).with_name("mutmut"))
COPIED = ("src", "tests", "tools", "benchmarks")


def settings() -> tuple[dict, dict]:
    """(shared [tool.mutmut] settings, the modules)."""
    table = dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"])
    return table, table.pop("modules")


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def prepare(name: str, module: dict, shared: dict) -> Path:
    """The module's folder, with today's sources and tests and its own configuration."""
    work = ROOT / ".mutation" / name
    work.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    # tools/ and benchmarks/: unit tests import them (test_sql_mutants.py, test_wan_refresh.py).
    for folder in COPIED:
        shutil.copytree(ROOT / folder, work / folder, dirs_exist_ok=True, ignore=ignore)
        # mutmut copies files it does not mutate only once: keep its copies current too.
        if (work / "mutants" / folder).exists():
            for path in (ROOT / folder).rglob("*"):
                rel = path.relative_to(ROOT)
                fresh = path.is_file() and "__pycache__" not in rel.parts
                if fresh and str(rel) not in module["files"]:
                    (work / "mutants" / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, work / "mutants" / rel)
    config = shared | {
        "source_paths": ["src/"],
        "only_mutate": module["files"],
        "pytest_add_cli_args_test_selection": module["tests"],
        "use_git_change_detection": False,
        "also_copy": ["tools/", "benchmarks/"],
    }
    project = (ROOT / "pyproject.toml").read_text()
    project = re.sub(r"(?ms)^\[tool\.mutmut[^\n]*\n.*?(?=^\[(?!tool\.mutmut)|\Z)", "", project)
    lines = ["[tool.mutmut]"] + [f"{k} = {toml_value(v)}" for k, v in config.items()]
    (work / "pyproject.toml").write_text(project.rstrip() + "\n\n" + "\n".join(lines) + "\n")
    return work


def run(work: Path, module: dict, jobs: int, names: list[str]) -> int:
    """mutmut on the module. Named mutants are tried again even with a verdict; without
    names, only mutants that have none are tried (a rerun resumes)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if names:
        return mutmut_run(work, env, jobs, names)
    if not module.get("functions") and not module.get("only"):
        return mutmut_run(work, env, jobs, [])
    # mutmut tries again every mutant its command line names, verdict or not; a module that
    # mutates only some functions must name them, so name only the mutants without a
    # verdict. The first run has none listed yet: it names the patterns. A run generates the
    # mutants afresh, and only a run does (a changed function loses its verdicts, and may
    # gain mutants): when a source changed since, one mutant is tried again to get that
    # done. Then list again, until none is left; three runs are enough for a change made
    # while the first one ran.
    for _ in range(3):
        found = verdicts(work, module)
        pending = [m for m, status in found.items() if status == "not checked"]
        if found and not pending and not changed_since_generated(work, module):
            return 0
        first = [g for p in module.get("only", []) for g in only_globs(p)]
        names = pending or (sorted(found)[:1] if found else first or module["functions"])
        failed = mutmut_run(work, env, jobs, names)
        if failed:
            return failed
    left = sum(status == "not checked" for status in verdicts(work, module).values())
    if left:
        print(f"{left} mutants still have no verdict: run again to go on")
    return 0


def changed_since_generated(work: Path, module: dict) -> bool:
    """Whether a source file is newer than the mutants mutmut generated from it (its own
    test: prepare() copies sources with their times)."""
    for name in module["files"]:
        generated = work / "mutants" / name
        if not generated.exists() or (work / name).stat().st_mtime > generated.stat().st_mtime:
            return True
    return False


def mutmut_run(work: Path, env: dict, jobs: int, names: list[str]) -> int:
    cmd = ["nice", "-n", "10", MUTMUT, "run", "--max-children", str(jobs), *names]
    return subprocess.run(cmd, cwd=work, env=env).returncode


def prefixes(module: dict) -> list[str]:
    """Mutant name prefixes of the module's files: src/ganpool/a/b.py -> ganpool.a.b."""
    return [
        f.removeprefix("src/").removesuffix(".py").replace("/", ".") + "." for f in module["files"]
    ]


def verdicts(work: Path, module: dict) -> dict[str, str]:
    """mutant name -> status, for the module's mutants."""
    listing = subprocess.run(
        [MUTMUT, "results", "--all", "true"], cwd=work, capture_output=True, text=True
    ).stdout
    patterns = module.get("functions") or [f"{p}*" for p in prefixes(module)]
    only = module.get("only", [])
    found = {}
    for line in listing.splitlines():
        mutant, sep, status = line.strip().rpartition(": ")
        if not sep or not any(fnmatch.fnmatchcase(mutant, p) for p in patterns):
            continue
        if not only or any(picks(p, mutant) for p in only):
            found[mutant] = status
    return found


def function_of(mutant: str) -> str:
    """The function a mutant is in: "issue_units" from
    "ganpool.coordinator.issuing.x_issue_units__mutmut_3", "Round.play" from
    "ganpool.coordinator.round.xǁRoundǁplay__mutmut_7"."""
    name = mutant.rpartition("__mutmut_")[0].rpartition(".")[2]
    if name.startswith("xǁ"):
        return ".".join(name[2:].split("ǁ"))
    return name.removeprefix("x_")


def picks(pattern: str, mutant: str) -> bool:
    """Whether an --only pattern takes the mutant: "Round.play" one method, "play" a function
    or a method of any class of that name."""
    function = function_of(mutant)
    if "." not in pattern:
        function = function.rpartition(".")[2]
    return fnmatch.fnmatchcase(function, pattern)


def only_globs(pattern: str) -> list[str]:
    """mutmut's name patterns for an --only pattern ("issue_units", "Round.play"), for a
    first run, before any mutant is listed."""
    if "." in pattern:
        cls, _, method = pattern.partition(".")
        return [f"*.xǁ{cls}ǁ{method}__mutmut_*"]
    return [f"*.x_{pattern}__mutmut_*", f"*ǁ{pattern}__mutmut_*"]


def report(name: str, work: Path, module: dict) -> str:
    found = verdicts(work, module)
    counts = Counter(found.values())
    ran = sum(n for status, n in counts.items() if status not in ("not checked", "skipped"))
    killed = counts["killed"] + counts["timeout"]
    rate = f"{killed / ran:.0%}" if ran else "n/a"
    summary = f"{name}: {killed} of {ran} mutants killed ({rate}); " + ", ".join(
        f"{status} {n}" for status, n in sorted(counts.items())
    )
    lines = [f"# Mutation report: {summary}", ""]
    for mutant, status in sorted(found.items()):
        if status in ("killed", "timeout", "not checked"):
            continue
        diff = subprocess.run(
            [MUTMUT, "show", mutant], cwd=work, capture_output=True, text=True
        ).stdout
        lines += [f"## {mutant}: {status}", "", "```diff", diff.strip(), "```", ""]
    (work / "report.md").write_text("\n".join(lines))
    return summary


def main() -> int:
    shared, modules = settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", choices=sorted(modules))
    parser.add_argument("--jobs", type=int, default=1, help="mutants tested at once")
    parser.add_argument("--report", action="store_true", help="only write the report")
    parser.add_argument(
        "--survivors", action="store_true", help="try survivors and timeouts again (new tests)"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="FUNCTION",
        help="only the mutants of functions matching this pattern (issue_units, Round.play, "
        "'Round.*'; repeatable); the report then covers these functions only",
    )
    args = parser.parse_args()
    module = modules[args.module] | ({"only": args.only} if args.only else {})
    work = ROOT / ".mutation" / args.module
    if not args.report:
        names = []
        if args.survivors:
            alive = ("survived", "no tests", "suspicious", "timeout")
            names = [m for m, status in verdicts(work, module).items() if status in alive]
            if not names:
                print("no survivors to try again")
        work = prepare(args.module, module, shared)
        if names or not args.survivors:
            failed = run(work, module, args.jobs, names)
            if failed:  # e.g. the clean run of the tests failed: no verdict means anything
                print(f"mutmut failed (exit status {failed}); see its output above")
                return failed
    print(report(args.module, work, module))
    print(f"survivors and their diffs: {work / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
