"""The example notebook (docs/notebooks/quickstart.ipynb) runs offline from top to bottom and
draws its pictures; the committed copy holds that output, so the site shows real maps."""
import sys
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.slow  # full-size models, training or a process: `-m "not slow"` leaves it out

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebooks" / "quickstart.ipynb"


def pictures(notebook) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells
               if cell.cell_type == "code" for output in cell.outputs)


def test_the_committed_notebook_shows_its_output():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert pictures(notebook) >= 3
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors


def test_the_notebook_runs_offline():
    sys.path.insert(0, str(NOTEBOOK.parents[1]))
    try:
        from make_notebook import execute
    finally:
        sys.path.pop(0)
    from nbclient.exceptions import CellExecutionError
    try:
        notebook = execute(NOTEBOOK)
    except CellExecutionError as e:
        pytest.fail(f"a notebook cell failed: {str(e)[-2000:]}")
    assert pictures(notebook) >= 3  # the Explanation twice, Captum's picture
    text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                   for o in c.outputs)
    assert "Gini sparseness" in text and "convergence delta" in text
    pages = [o["data"]["text/html"] for c in notebook.cells if c.cell_type == "code"
             for o in c.outputs if "text/html" in o.get("data", {})]
    assert any("background:rgba(220,40,40" in page and ">not<" in page for page in pages)
