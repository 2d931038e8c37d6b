"""tools/mutation.py's --only: which function a mutant name is in, which mutants a pattern
takes, and the name patterns a first run hands mutmut (which matches them with fnmatch)."""

import fnmatch
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NAMES = [
    "ganpool.coordinator.issuing.x_issue_units__mutmut_3",
    "ganpool.coordinator.issuing.x_issue_ahead__mutmut_3",
    "ganpool.coordinator.round.xǁRoundǁplay__mutmut_7",
    "ganpool.coordinator.round.xǁRoundǁ_play__mutmut_1",
    "ganpool.coordinator.coordinator.xǁCoordinatorǁ_play__mutmut_2",
    "ganpool.coordinator.coordinator.xǁCoordinatorǁtick__mutmut_12",
]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("mutation_tool", ROOT / "tools/mutation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_mutant_names_its_function(tool):
    assert [tool.function_of(n) for n in NAMES] == [
        "issue_units",
        "issue_ahead",
        "Round.play",
        "Round._play",
        "Coordinator._play",
        "Coordinator.tick",
    ]


@pytest.mark.parametrize(
    "pattern, picked",
    [
        ("issue_units", [0]),
        ("Round.play", [2]),
        ("_play", [3, 4]),
        ("Coordinator.*", [4, 5]),
    ],
)
def test_only_picks_the_same_mutants_before_and_after_they_are_listed(tool, pattern, picked):
    listed = [i for i, n in enumerate(NAMES) if tool.picks(pattern, n)]
    globbed = [
        i
        for i, n in enumerate(NAMES)
        if any(fnmatch.fnmatchcase(n, g) for g in tool.only_globs(pattern))
    ]
    assert listed == picked
    assert globbed == picked
