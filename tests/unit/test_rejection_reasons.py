"""Every refusal the Python code writes starts with a RejectionReason (the database's own are
read from the migrated functions in tests/integration/test_vocabulary.py).

A refusal's text is read from the source: the reasons handed to the coordinator's `reject`,
`_reject` and `_cancel_stale`, and every PayloadError screening can raise (its text becomes
the reason). Each is reduced to the text it starts with; an f-string that starts with
something the test cannot read fails, so a new kind of reason cannot slip in unnamed."""

import ast
from pathlib import Path

from ganpool.protocol.vocabulary import RejectionReason

SRC = Path(__file__).resolve().parents[2] / "src" / "ganpool"
# Where refusals are written: the coordinator, and the payload checks its screening runs.
MODULES = [
    *sorted(str(p.relative_to(SRC)) for p in (SRC / "coordinator").glob("*.py")),
    "serialization/tensors.py",
    "serialization/deltas.py",
]
NOT_SCREENING = {"Packer"}  # packs on the worker's side: its errors never become a refusal
REJECTS = {"reject", "_reject", "_cancel_stale"}
# Expressions a reason starts with whose values the test states: screening's cohort
# statistics are "norm.G" and "norm.D" (Screening.read), named by `name[5:]`.
KNOWN = {"name[5:]": ("G", "D")}


def _assignments(function: ast.AST) -> dict[str, list[ast.expr]]:
    out: dict[str, list[ast.expr]] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                names = target.elts if isinstance(target, ast.Tuple) else [target]
                values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
                for name, value in zip(names, values, strict=False):
                    if isinstance(name, ast.Name):
                        out.setdefault(name.id, []).append(value)
    return out


def _starts(node: ast.expr, local: dict, params: set[str]) -> list[tuple[str, bool]]:
    """The texts a reason built by `node` can start with, each with whether it is the whole
    text ("" where it starts with something unreadable)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [(node.value, True)]
    if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "RejectionReason":
        return [(RejectionReason[node.attr].value, True)]
    if isinstance(node, ast.IfExp):
        return _starts(node.body, local, params) + _starts(node.orelse, local, params)
    if isinstance(node, ast.BoolOp):
        return [s for v in node.values for s in _starts(v, local, params)]
    if isinstance(node, ast.Name):
        if node.id in params:
            return []  # a caller's reason: read at the call
        found = [s for v in local.get(node.id, []) for s in _starts(v, local, params)]
        return found or [("", False)]
    if isinstance(node, ast.Call) and ast.unparse(node) == "str(e)":
        return []  # a PayloadError's text: read where it is raised
    if isinstance(node, ast.JoinedStr):
        starts = [("", True)]
        for part in node.values:
            if isinstance(part, ast.Constant):
                inner = [(part.value, True)]
            elif ast.unparse(part.value) in KNOWN:
                inner = [(v, True) for v in KNOWN[ast.unparse(part.value)]]
            else:
                inner = _starts(part.value, local, params) or [("", False)]
            starts = [(s + i, whole) for s, _ in starts for i, whole in inner]
            if not all(whole for _, whole in starts):
                return [(s, False) for s, _ in starts]
        return starts
    return [("", False)]


def _planted_by_mutmut(name: str) -> bool:
    """Under `make mutation` the source read here is mutmut's copy: each function is kept as
    `..._mutmut_orig` beside its mutants `..._mutmut_1`, `_2`, ...; only the original counts."""
    return "__mutmut_" in name and not name.endswith("__mutmut_orig")


def _reasons() -> list[tuple[str, str]]:
    """(where, the text it starts with) for every refusal the Python code writes."""
    found = []
    for module in MODULES:
        tree = ast.parse((SRC / module).read_text())
        skip = {
            id(n)
            for c in ast.walk(tree)
            if isinstance(c, ast.ClassDef) and c.name in NOT_SCREENING
            for n in ast.walk(c)
        }
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef) or id(function) in skip:
                continue
            if _planted_by_mutmut(function.name):
                continue
            local = _assignments(function)
            params = {a.arg for a in function.args.args}
            for call in ast.walk(function):
                if not isinstance(call, ast.Call) or not call.args:
                    continue
                name = ast.unparse(call.func).split(".")[-1]
                if name == "PayloadError":
                    reason = call.args[0]
                elif name in REJECTS:
                    reason = call.args[-1]
                    if name == "_cancel_stale" and len(call.args) < 3:  # (store, version[, reason])
                        continue  # the default: the f-string in _cancel_stale itself
                else:
                    continue
                where = f"{module}:{call.lineno}"
                found += [(where, s) for s, _ in _starts(reason, local, params)]
    return found


def test_every_refusal_the_code_writes_starts_with_a_rejection_reason():
    reasons = _reasons()
    # The families the code is known to write (a reading that finds none would pass).
    kinds = {k for _, text in reasons for k in RejectionReason if text.startswith(k)}
    assert len(reasons) >= 15, reasons
    assert {
        RejectionReason.STALE,
        RejectionReason.SPOT_CHECK_FAILED,
        RejectionReason.RUN_ENDED,
        RejectionReason.G_NORM_OUTLIER,
        RejectionReason.D_NORM_OUTLIER,
        RejectionReason.BATCHNORM_STATISTIC,
        RejectionReason.BAD_TENSOR,
        RejectionReason.PAYLOAD_TOO_LARGE,
        RejectionReason.NO_PAYLOAD,
    } <= kinds
    unnamed = [
        (where, text)
        for where, text in reasons
        if not any(text.startswith(k) for k in RejectionReason)
    ]
    assert not unnamed, f"refusals that start with no RejectionReason (add one): {unnamed}"


def test_no_reason_starts_another():
    """A reason belongs to exactly one family."""
    clashes = [
        (a, b) for a in RejectionReason for b in RejectionReason if a != b and b.startswith(a)
    ]
    assert not clashes, clashes
