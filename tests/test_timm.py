"""timm's CNNs are explained like torchvision's (issue 16): every method on one small model of
each listed family, conservation in float64, and ``--model timm:NAME`` through timm's own
loading path (the Hugging Face cache, or a checkpoint with ``--weights``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import relprop
from relprop import cli, models

pytestmark = pytest.mark.slow  # full-size models, training or a process: `-m "not slow"` leaves it out

timm = pytest.importorskip("timm", reason="the timm tests need timm (pip install -e '.[test]')")

FAMILIES = {"resnet": "resnet18", "resnetv2": "resnetv2_50", "efficientnet": "efficientnet_b0",
            "mobilenetv3": "mobilenetv3_small_100", "regnet": "regnety_002",
            "convnext": "convnext_atto", "densenet": "densenet121",
            "inception_v3": "inception_v3"}
QUICK = {"integrated-gradients": {"steps": 4}, "smoothgrad": {"samples": 2}}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_method_explains_a_timm_model(family):
    name = FAMILIES[family]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    size = 96 if name == "inception_v3" else 64
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    for method in relprop.methods():
        if method in relprop.methods("attention"):  # attention rollout: transformers only
            continue
        e = relprop.explain(model, x, target=[1, 7], method=method, **QUICK.get(method, {}))
        assert e.relevance.shape == x.shape and torch.isfinite(e.relevance).all(), method
    model64, x64 = model.double(), x.double()
    for method in ("rap", "rap-stable"):
        e = relprop.explain(model64, x64, target=[1, 7], method=method)
        assert (e.delta.abs() <= 1e-9 * e.score.abs().clamp(min=1)).all(), (method, e.delta)


def test_timm_model_without_weights_offline_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["explain", "--model", "timm:resnet18", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "timm's 'resnet18'" in err and "--weights PATH" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert cli.main(["explain", "--model", "timm:resnet1x", "--out", str(tmp_path)]) == 2
    assert "timm has no model 'resnet1x'" in capsys.readouterr().err


def test_timm_model_with_a_weights_file(tmp_path, capsys):
    torch.manual_seed(0)
    source = timm.create_model("resnet18", pretrained=False).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    out = tmp_path / "out"
    assert cli.main(["explain", "--model", "timm:resnet18", "--weights", str(path), "--out",
                     str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "timm:resnet18" and len(summary["images"]) == 4
    row = summary["images"][0]
    assert abs(row["relevance_sum"] - row["logit"]) <= 1e-3 * max(1, abs(row["logit"]))


def test_timm_weights_come_from_the_hugging_face_cache(tmp_path):
    """A model whose weights are in the hub's cache loads them through timm, offline."""
    from safetensors.torch import save_file
    torch.manual_seed(1)
    source = timm.create_model("resnet18", pretrained=False).eval()
    repo = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    folder = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()},
              str(snapshot / "model.safetensors"))
    code = ("import torch, timm, relprop.models as m; model = m.load('timm:resnet18')[0]; "
            "torch.manual_seed(1); src = timm.create_model('resnet18').eval(); "
            "print(all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), "
            "src.state_dict().values())))")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "True"
