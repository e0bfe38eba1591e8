import copy
import importlib.util
import os
from pathlib import Path

import pytest
import torch

# Under pytest-xdist (`pytest -n 2`, the README's command) each worker computes on one thread:
# two workers on two cores, not four threads on them. No verdict depends on the thread count
# (the suite passes with OMP_NUM_THREADS=1 and 2).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    # ... and so does every process a test starts (the notebook's kernel, the CLI, torchrun):
    # a third OpenMP pool on two busy cores spins waiting for its threads, and the notebook's
    # small training loop took 380 s under `pytest -n 2` instead of 26 s alone.
    os.environ["OMP_NUM_THREADS"] = "1"

# The longest tests (a minute or more on one thread: training on the spot, full-size float64
# models) run first, so that under `pytest -n 2` the two workers end together instead of one
# finishing a long test alone at the end.
LONG_FIRST = (
    "tests/test_synthetic.py::test_evaluate_on_a_synthetic_set",
    "tests/test_synthetic_detection.py::test_evaluate_on_the_detection_set",
    "tests/test_notebook.py::test_the_notebook_runs_offline",
    "tests/test_detection.py::test_relevance_sums_to_the_logit_in_float64[ssd300",
    "tests/test_reference.py::test_float64_agrees_with_the_release_in_float64[vgg16",
)


def pytest_collection_modifyitems(items):
    def rank(item):  # the longest first; the rest in their order (the sort is stable)
        return next((i for i, prefix in enumerate(LONG_FIRST)
                     if item.nodeid.startswith(prefix)), len(LONG_FIRST))
    items.sort(key=rank)


SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REFERENCE = SHARED / "fixtures" / "rap-reference"
IMAGES = SHARED / "data" / "imagenet-samples"


def _require(path: Path):
    if not path.exists():
        pytest.fail(f"{path} is missing: the tests read ../shared beside the checkout")


@pytest.fixture(scope="session")
def reference_build():
    """The fixtures' own build.py, which rebuilds each seeded torchvision model."""
    _require(REFERENCE / "build.py")
    spec = importlib.util.spec_from_file_location("rap_reference_build", REFERENCE / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_case(name: str) -> dict:
    _require(REFERENCE / f"{name}.pt")
    return torch.load(REFERENCE / f"{name}.pt", weights_only=False)


def float64_copy(model):
    return copy.deepcopy(model).double().eval()


@pytest.fixture(autouse=True)
def restore_registries():
    """Tests that register ops or rules leave relprop's registries as they found them."""
    from relprop import ops, registry as methods
    from relprop.rules import registry as rules
    saved = [(d, dict(d)) for d in (ops._MODULES, ops._FUNCTIONS, ops._METHODS, rules._ANALYSES,
                                    rules._BASES, methods._METHODS)]
    saved_rules = {m: dict(r) for m, r in rules._RULES.items()}
    yield
    for d, copy_ in saved:
        d.clear()
        d.update(copy_)
    rules._RULES.clear()
    rules._RULES.update(saved_rules)
    rules._VERSION[0] += 1  # plans made with a rule a test registered are made again
    ops._VERSION[0] += 1
