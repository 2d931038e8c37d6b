"""Summarise one module's mutmut results: counts by status, the kill rate, and every
surviving mutant with its diff, written to mutants/report-<module>.md.

    python tools/mutation_report.py aggregation "ganpool.aggregation.robust."

Run after `mutmut run` (`make mutation MODULE=...` does both). The kill rate counts killed
and timed-out mutants over those that ran; "not checked" ones (a run cut short) are listed
apart, so a partial run is never mistaken for a full one.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

MUTMUT = str(Path(sys.executable).with_name("mutmut"))


def results(prefixes: list[str]) -> dict[str, str]:
    """mutant name -> status, for the mutants whose names start with one of `prefixes`."""
    out = subprocess.run(
        [MUTMUT, "results", "--all", "true"], capture_output=True, text=True, check=True
    ).stdout
    found = {}
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name.startswith(tuple(prefixes)):
            found[name] = status
    return found


def main() -> int:
    module, prefixes = sys.argv[1], sys.argv[2:]
    found = results(prefixes)
    counts = Counter(found.values())
    ran = sum(n for status, n in counts.items() if status not in ("not checked", "skipped"))
    killed = counts["killed"] + counts["timeout"]
    rate = f"{killed / ran:.0%}" if ran else "n/a"
    summary = (
        f"{module}: {killed} of {ran} mutants killed ({rate}); "
        + ", ".join(f"{status} {n}" for status, n in sorted(counts.items()))
    )
    lines = [f"# Mutation report: {summary}", ""]
    for name, status in sorted(found.items()):
        if status in ("killed", "timeout", "not checked"):
            continue
        diff = subprocess.run([MUTMUT, "show", name], capture_output=True, text=True).stdout
        lines += [f"## {name}: {status}", "", "```diff", diff.strip(), "```", ""]
    report = Path("mutants") / f"report-{module}.md"
    report.parent.mkdir(exist_ok=True)
    report.write_text("\n".join(lines))
    print(summary)
    print(f"survivors and their diffs: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
