"""Execute docs/notebooks/*.ipynb in place (offline, the embedded model), so that the site shows
real output: ``.venv/bin/python docs/make_notebook.py``. tests/test_notebook.py runs the same."""
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).parent / "notebooks"


def execute(path: Path, timeout: int = 600) -> nbformat.NotebookNode:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return notebook


if __name__ == "__main__":
    for path in sorted(HERE.glob("*.ipynb")):
        nbformat.write(execute(path), path)
        print(f"executed {path}")
