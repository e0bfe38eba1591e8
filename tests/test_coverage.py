"""The coverage benchmark's fast subset (issue 24): models that torch.fx cannot trace or that use
what the capture had to learn, measured by ``benchmarks/coverage.py``'s own ``measure`` (random
weights, zero-initialised parameters redrawn): each must be explained, by the front end it
claims, with ``rap`` and ``rap-stable`` conserving to 1e-9·max(1, |score|) in float64."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # full-size models, training or a process: `-m "not slow"` leaves it out

timm = pytest.importorskip("timm", reason="the coverage subset needs timm (pip install -e '.[test]')")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "coverage.py"
# module: front end (torch.export where fx cannot trace it), each a few seconds here
TIMM = {"vision_transformer": "torch.export",  # timm's own test_vit branches on sizes
        "convit": "torch.export",  # a quotient of two signals
        "crossvit": "torch.export",  # bicubic resampling
        "efficientvit_msra": "torch.export",  # split_with_sizes
        "efficientvit_mit": "torch.export",  # an autocast region, .float() in a model's dtype
        "tiny_vit": "torch.export",
        "csatv2": "torch.fx"}  # addcmul
TORCHVISION = {"lraspp_mobilenet_v3_large": "torch.fx"}  # a segmenter: a dict, resampling


def _coverage():
    spec = importlib.util.spec_from_file_location("relprop_coverage_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def coverage():
    return _coverage()


def _measured(coverage, listing, wanted):
    found = {name.split(":", 1)[1]: (name, kind, build) for name, kind, build in listing(None)}
    assert set(wanted) <= set(found), set(wanted) - set(found)
    return {name: coverage.measure(*found[name]) for name in wanted}


@pytest.mark.parametrize("module", sorted(TIMM))
def test_timm_modules_that_needed_the_capture(coverage, module):
    row = _measured(coverage, coverage.timm_models, [module])[module]
    assert row["status"] == "explained", row
    assert row["front_end"] == TIMM[module]
    assert row["rap_error"] <= coverage.TOLERANCE and row["rap-stable_error"] <= coverage.TOLERANCE
    assert row["rap-stable_mass"] > 0  # a map with something in it


def test_a_torchvision_segmenter(coverage):
    rows = _measured(coverage, coverage.torchvision_models, TORCHVISION)
    for name, row in rows.items():
        assert row["status"] == "explained" and row["front_end"] == TORCHVISION[name], row


def test_the_table_counts_what_was_built(coverage):
    """What the docs' table says: explained out of built, a model that is not an image model
    or did not build left out of both."""
    rows = [{"model": "timm:a", "status": "explained", "front_end": "torch.fx"},
            {"model": "timm:b", "status": "explained", "front_end": "torch.export"},
            {"model": "timm:c", "status": "unsupported", "reason": "x"},
            {"model": "timm:d", "status": "not built", "reason": "y"},
            {"model": "timm:e", "status": "not pixels", "reason": "z"}]
    head = coverage.table(rows).splitlines()[2]
    assert head == "| timm | 3 | 2 (67 %) | 1 | 1 |"
