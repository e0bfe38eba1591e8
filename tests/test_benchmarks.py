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


LXT_IN_ONE_PROCESS = r"""
import sys, torch, torchvision, relprop
sys.path.insert(0, sys.argv[1])
from bench import lxt_vit
classes = (torch.nn.GELU, torch.nn.LayerNorm, torch.nn.MultiheadAttention)
before = [c.forward for c in classes]
torch.manual_seed(0)
model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                             num_heads=2, hidden_dim=32, mlp_dim=64,
                                             num_classes=10).eval()
torch.nn.init.normal_(model.heads.head.weight)  # torchvision starts it at 0
x, target = torch.randn(3, 3, 32, 32), torch.tensor([1, 4, 7])
lxt = lxt_vit(model, x, target)
assert [c.forward for c in classes] == before, "LXT's patch is on outside its call"
ours = relprop.explainer(model, "lrp-attn").attribute(x, target)
theirs = lxt().detach()
assert [c.forward for c in classes] == before, "LXT's patch stayed on after its call"
error = (ours - theirs).flatten(1).abs().amax(1)
assert (error <= 1e-6 * theirs.flatten(1).abs().amax(1)).all(), error
assert (theirs.flatten(1).abs().amax(1) > 0).all()
ours_again = relprop.explainer(model, "lrp-attn").attribute(x, target)
assert torch.equal(ours, ours_again), "relprop changed after LXT ran"
print("ok")
"""


def test_lxt_is_timed_beside_relprop_in_one_process(tmp_path):
    """``bench.lxt_vit`` turns LXT's global patch on for its own call only, so that LXT is timed
    interleaved with relprop's methods: outside its call torchvision's classes are the originals
    (relprop's maps do not change), inside it LXT computes its own relevance, equal to
    lrp-attn's. In a process of its own: LXT's packages come first on its path."""
    import subprocess
    from tests.test_transformers import lxt_environment
    env = lxt_environment()
    done = subprocess.run([sys.executable, "-c", LXT_IN_ONE_PROCESS, str(BENCHMARKS)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
