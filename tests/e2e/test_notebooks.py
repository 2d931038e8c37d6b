"""The notebooks in notebooks/, executed cell by cell (nbclient, a real kernel) against a local
run. Cells tagged `skip-in-tests` (installing ganpool, Colab's file picker) are left out; the
cell tagged `parameters` gets this test's values in place of the examples."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

from ganpool.store import Store, connect
from ganpool.students import add_student
from tests.helpers import Threads, make_run, train_distributed

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

NOTEBOOKS = Path(__file__).parents[2] / "notebooks"


def _with_parameters(nb, values: dict) -> None:
    """Replace the parameters cell; a name the notebook no longer defines fails the test."""
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    defined = {line.split("=")[0].strip() for line in cell.source.splitlines() if "=" in line}
    assert set(values) <= defined, f"the parameters cell defines {defined}"
    cell.source = "\n".join(f"{name} = {value!r}" for name, value in values.items())


def execute(name: str, values: dict, cwd: Path):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nb.cells = [c for c in nb.cells if "skip-in-tests" not in c.metadata.get("tags", [])]
    _with_parameters(nb, values)
    # `!ganpool ...` in a cell runs the ganpool of the Python running these tests.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    client = NotebookClient(nb, timeout=240, kernel_name="python3", allow_errors=False)
    client.execute(cwd=str(cwd), env=env)
    return nb


def _text(nb) -> str:
    return "".join(
        out.get("text", "") for c in nb.cells if c.cell_type == "code" for out in c.outputs
    )


def _pngs(nb) -> list[bytes]:
    return [
        base64.b64decode(out["data"]["image/png"])
        for c in nb.cells
        if c.cell_type == "code"
        for out in c.outputs
        if "image/png" in out.get("data", {})
    ]


def test_the_colab_notebook_joins_a_run_as_a_student(embedded_db, embedded_server, tmp_path):
    notebook = (NOTEBOOKS / "join_from_colab.ipynb").read_text()
    assert "--device auto" in notebook and "--device cuda" not in notebook
    run = make_run(embedded_db, "colab-class", max_steps=2, update_rule="alternating")
    store = Store(connect(embedded_db))
    join = add_student(store, "colab", host="127.0.0.1", port=embedded_server.port)
    store.close()
    threads = Threads()
    from ganpool.coordinator import Coordinator

    threads.start(Coordinator(embedded_db, run, poll_s=0.2).serve)
    try:
        nb = execute("join_from_colab.ipynb", {"INSTALL_FROM": "unused", "JOIN": join}, tmp_path)
    finally:
        threads.join(60)  # the run ends at its second step: the coordinator returns
    text = _text(nb)
    assert "[colab] joined run 'colab-class' on cpu" in text  # --device auto on a CPU
    assert "[colab] done: 8 units" in text  # 2 steps x 2 units x (D, G), all by this student


def test_the_generator_notebook_draws_a_grid_and_interpolates(embedded_db, tmp_path):
    run = make_run(embedded_db, "takehome", max_steps=2, unit_size=10)
    train_distributed(embedded_db, run, workers=1)
    model = tmp_path / "model"
    env = {**os.environ}
    for args in (
        ["export", "--db", embedded_db, "--run", "takehome", "--out", str(model)],
        ["sample", "--model", str(model), "--n", "64", "--seed", "0", "--out", "cli.png"],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "ganpool", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
    nb = execute("explore_generator.ipynb", {"MODEL": "model", "INSTALL_FROM": "unused"}, tmp_path)
    assert "32x32 faces, 1 channel(s), z of 64 numbers" in _text(nb)
    grid, row = _pngs(nb)
    assert grid == (tmp_path / "cli.png").read_bytes()  # the faces `ganpool sample` draws
    with Image.open(io.BytesIO(row)) as img:  # 8 frames of 32 px side by side, a 2 px border, x3
        assert img.size == (3 * (8 * 32 + 4), 3 * (32 + 4))
