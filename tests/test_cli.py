"""The CLI as a new user runs it, offline: the default run falls back to the embedded model."""
import json
import urllib.error

import numpy as np
import pytest
import torchvision
from PIL import Image

from relprop import cli


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty torch cache, whatever this machine has."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    monkeypatch.setattr("torch.hub.load_state_dict_from_url", no_network)


def test_default_run_falls_back_to_the_embedded_model(offline, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["explain", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "using efficientnet_lite0" in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "efficientnet_lite0"
    rows = {r["image"]: r for r in summary["images"]}
    assert set(rows) == set(cli.SAMPLES)
    assert "cat" in rows["chelsea"]["predicted"]
    assert rows["coffee"]["predicted"] == "espresso"
    for r in rows.values():
        assert abs(r["relevance_sum"] - r["logit"]) <= 1e-2 * abs(r["logit"])
        heat = np.asarray(Image.open(r["heatmap"]))
        assert heat.shape == (224, 224, 3)
        assert Image.open(r["overlay"]).size == (224, 224)
        assert (heat.min(axis=2) < 250).mean() > 0.01  # not a blank picture
    assert (out / "summary.csv").read_text().startswith("image,predicted,probability")
    assert "chelsea" in captured.out and "Egyptian cat" in captured.out


def test_unreadable_image_is_reported_and_skipped(offline, tmp_path, capsys):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    good = tmp_path / "cat.png"
    import skimage.data
    Image.fromarray(skimage.data.chelsea()).save(good)
    code = cli.main(["explain", str(bad), str(good), "--model", "efficientnet_lite0",
                     "--out", str(tmp_path / "o"), "--target", "285"])
    assert code == 1
    captured = capsys.readouterr()
    assert "skipping notes.jpg" in captured.err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [r["image"] for r in summary["images"]] == ["cat"]
    assert summary["images"][0]["target"] == 285


def test_named_model_without_weights_fails_clearly(offline, tmp_path, capsys):
    code = cli.main(["explain", "--model", "vgg16", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "vgg16" in err and "--weights PATH" in err and "Traceback" not in err


def test_weights_file_and_bad_arguments(tmp_path, capsys):
    assert cli.main(["explain", "--model", "vgg16", "--weights", str(tmp_path / "nope.pth"),
                     "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["explain", "--model", "alexnet", "--out", str(tmp_path)]) == 2
    assert "unknown model 'alexnet'" in capsys.readouterr().err
    assert cli.main(["explain", "--device", "gpu7", "--out", str(tmp_path)]) == 2
    assert "is not a device" in capsys.readouterr().err


def test_bfloat16_refused_where_untested(tmp_path, capsys):
    """EfficientNet-Lite0 has residual additions, whose rule is not tested in bfloat16."""
    code = cli.main(["explain", "--model", "efficientnet_lite0", "--dtype", "bfloat16",
                     "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "not tested in torch.bfloat16 for ops of kind add" in err and "Traceback" not in err
    assert "--dtype float32" in err and not (tmp_path / "summary.json").exists()


def test_models_lists_the_registry(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("vgg16", "resnet50", "inception_v3", "efficientnet_lite0"):
        assert name in out
