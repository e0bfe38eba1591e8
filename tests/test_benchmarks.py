"""The GPU benchmark script runs its CPU path end to end (no GPU is lent to CI): every row has
the gradient and relprop's methods timed, the ratios in its table, and a method relprop does not
test in bfloat16 on a model shows as refused, not as a time."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_the_gpu_benchmark_runs_its_cpu_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu
    gpu.main(["--device", "cpu", "--models", "resnet18", "--batches", "1",
              "--precisions", "fp32", "bf16", "--size", "32", "--warmup", "0", "--repeats", "1",
              "--out", str(tmp_path)])
    found = json.loads((tmp_path / "gpu-cpu.json").read_text())
    rows = {(r["model"], r["precision"]): r for r in found["rows"]}
    assert set(rows) == {("resnet18", "fp32"), ("resnet18", "bf16")}
    for r in found["rows"]:
        assert r["ms"]["gradient"] > 0 and r["ms"]["forward"] > 0
    assert {"rap", "rap-stable", "lrp-epsilon-plus"} <= set(rows["resnet18", "fp32"]["ms"])
    assert "lrp-attn" not in rows["resnet18", "fp32"]["ms"]  # no attention to explain
    # residual networks' RAP is not tested in bfloat16: refused, with relprop's reason
    assert "rap" in rows["resnet18", "bf16"]["refused"]
    assert "rap" not in rows["resnet18", "bf16"]["ms"]
    table = (tmp_path / "gpu-cpu.md").read_text()
    assert "| resnet18 | 1 | fp32 |" in table and "refused" in table
    sys.modules.pop("gpu", None)
