"""notebooks/quickstart.ipynb executes from top to bottom (tiny runs: EMOTE_QUICK=1) and draws its plot."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs_and_plots_the_learning_curve(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOTE_QUICK", "1")
    monkeypatch.setenv("EMOTE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    plot_cells = [c for c in nb.cells if "plot" in c.metadata.get("tags", [])]
    assert len(plot_cells) == 1
    images = [o for o in plot_cells[0].outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) == 1
    import base64

    png = base64.b64decode(images[0]["data"]["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    run_dir = tmp_path / "runs" / "quickstart-sac"
    assert (run_dir / "learning_curve.png").is_file() and (run_dir / "policy").is_dir()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "compilations of the step: 1" in text  # the host hook changed the learning rate without recompiling
    assert "NNX policy after" in text
