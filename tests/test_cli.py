"""The CLI as a new user runs it, offline: the default run falls back to the embedded model."""
import csv
import dataclasses
import json
import os
import urllib.error
from pathlib import Path

import numpy as np
import torch
import pytest
import torchvision
from PIL import Image

from relprop import api, cli, prepare
from relprop.cli import common
from relprop.cli import explain as explain_command


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
    assert set(rows) == set(prepare.SAMPLES)
    assert "cat" in rows["chelsea"]["predicted"]
    assert rows["coffee"]["predicted"] == "espresso"
    for r in rows.values():
        assert abs(r["relevance_sum"] - r["logit"]) <= 1e-2 * abs(r["logit"])
        heat = np.asarray(Image.open(r["heatmap"]))
        assert heat.shape == (224, 224, 3)
        assert Image.open(r["overlay"]).size == (224, 224)
        assert (heat.min(axis=2) < 250).mean() > 0.01  # not a blank picture
    assert (out / "summary.csv").read_text().startswith("image,file,predicted,probability")
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
    assert f"skipping {bad}: not an image" in captured.err
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
    assert cli.main(["explain", "--model", "alexnett", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'alexnett'; did you mean alexnet" in err and "relprop models" in err
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


# --- inputs, outputs and errors as a careless user meets them ---------------------------------

def _picture(path, sample="chelsea", size=(96, 64)):
    """A small copy of a scikit-image sample; the model sees it at 224 x 224 all the same."""
    import skimage.data
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(getattr(skimage.data, sample)()).resize(size).save(path)
    return path


def _explain(out, *args):
    return cli.main(["explain", *map(str, args), "--model", "efficientnet_lite0",
                     "--out", str(out)])


def _one_error_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("relprop: error: "), err
    return lines[0]


@pytest.fixture
def no_model_work(monkeypatch):
    """Options that are wrong must fail before a model is loaded or an image is read."""
    def refuse(*args, **kwargs):
        raise AssertionError("model or image work before the options were checked")
    monkeypatch.setattr(cli.models, "load", refuse)
    monkeypatch.setattr(Image, "open", refuse)


def test_same_named_images_in_two_folders_get_their_own_outputs(tmp_path, capsys):
    a = _picture(tmp_path / "a" / "pic.png", "chelsea")
    b = _picture(tmp_path / "b" / "pic.png", "coffee")
    out = tmp_path / "out"
    assert _explain(out, a, b) == 0
    rows = json.loads((out / "summary.json").read_text())["images"]
    assert [(r["image"], r["file"]) for r in rows] == [("pic", str(a)), ("pic-2", str(b))]
    assert [Path(r["heatmap"]).name for r in rows] == ["pic_heatmap.png", "pic-2_heatmap.png"]
    assert "cat" in rows[0]["predicted"] and rows[1]["predicted"] == "espresso"
    assert Path(rows[0]["overlay"]).read_bytes() != Path(rows[1]["overlay"]).read_bytes()
    with open(out / "summary.csv") as f:
        assert [(r["image"], r["file"]) for r in csv.DictReader(f)] == [("pic", str(a)),
                                                                        ("pic-2", str(b))]


def test_output_names_are_unique_and_short():
    long = "a" * 250
    names = common.output_names([long, long[:-1] + "b", "Pic", "pic", "pic-2", ""])
    assert names == ["a" * common.NAME_BYTES, "a" * common.NAME_BYTES + "-2", "Pic", "pic-2",
                     "pic-2-2", "image"]
    assert len("é" * 200) * 2 > common.NAME_BYTES
    cut = common.output_names(["é" * 200])[0]  # two bytes a letter: never half a letter
    assert cut == "é" * (common.NAME_BYTES // 2)


def test_an_input_with_a_very_long_name_is_explained(tmp_path, capsys):
    image = _picture(tmp_path / ("x" * 250 + ".png"))
    out = tmp_path / "out"
    assert _explain(out, image) == 0
    row = json.loads((out / "summary.json").read_text())["images"][0]
    assert row["file"] == str(image) and Path(row["heatmap"]).is_file()
    assert len(Path(row["overlay"]).name) <= common.NAME_BYTES + len("_overlay.png")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the 224 x 224 crop
def test_bad_images_are_skipped_by_name_and_the_others_explained(tmp_path, monkeypatch,
                                                                  capsys):
    good = _picture(tmp_path / "good.png", size=(80, 60))
    bomb = _picture(tmp_path / "bomb.png", size=(300, 250))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30_000)  # Pillow refuses above twice this
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    out = tmp_path / "out"
    assert _explain(out, bomb, truncated, good, text, tmp_path / "missing.png") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    skips = [line for line in err.splitlines() if line.startswith("relprop: skipping")]
    assert [line.split(": ")[1] for line in skips] == [
        f"skipping {p}" for p in (bomb, truncated, text, tmp_path / "missing.png")]
    assert "decompression bomb" in skips[0] and "truncated" in skips[1]
    assert "not an image" in skips[2] and "no such file" in skips[3]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["file"] for r in summary["images"]] == [str(good)]
    assert [s["file"] for s in summary["skipped"]] == [str(bomb), str(truncated), str(text),
                                                       str(tmp_path / "missing.png")]
    assert all(s["reason"] for s in summary["skipped"])


def test_sixteen_bit_image_is_explained_like_the_eight_bit_one(tmp_path, capsys):
    gray = np.asarray(Image.open(_picture(tmp_path / "cat.png")).convert("L"))
    Image.fromarray(gray).save(tmp_path / "eight.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I;16")
    assert _explain(tmp_path / "out", tmp_path / "eight.png", tmp_path / "sixteen.png") == 0
    eight, sixteen = json.loads((tmp_path / "out" / "summary.json").read_text())["images"]
    assert sixteen["predicted"] == eight["predicted"]
    assert sixteen["logit"] == pytest.approx(eight["logit"], rel=1e-3)


@pytest.mark.parametrize("out, says", [("file", "is a file, not a folder"),
                                       ("file/sub/out", "which is a file"),
                                       ("", "--out is empty")])
def test_out_that_cannot_be_a_folder_fails_first(out, says, tmp_path, monkeypatch,
                                                  no_model_work, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("a file")
    assert cli.main(["explain", str(tmp_path / "x.png"), "--out", out]) == 2
    assert says in _one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_unwritable_out_fails_first(tmp_path, monkeypatch, no_model_work, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != locked
                        and real_access(p, mode, **kw))
    assert cli.main(["explain", "--out", str(locked / "out")]) == 2
    assert "not writable" in _one_error_line(capsys.readouterr().err)
    assert not (locked / "out").exists()


@pytest.mark.parametrize("device", ["mps", "meta", "foo", "cuda:99"])
def test_unsupported_device_fails_first(device, tmp_path, no_model_work, capsys):
    assert cli.main(["explain", "--device", device, "--out", str(tmp_path)]) == 2
    _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("target, says", [("²", "neither a class index"),
                                          ("5000", "out of range"),
                                          ("-1", "out of range"),
                                          ("tabby cat", "'tabby'")])
def test_bad_target_fails_before_any_image_is_read(target, says, tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("an image was read before --target was checked")
    monkeypatch.setattr(Image, "open", refuse)
    code = _explain(tmp_path / "out", tmp_path / "cat.png", "--target", target)
    assert code == 2
    assert says in _one_error_line(capsys.readouterr().err)


def test_an_explainer_error_is_one_line(tmp_path, monkeypatch, capsys):
    def fails(self, inputs, target=None, layer=None):
        raise ValueError("the model's output is not finite:\nNaN logits for 1 image")
    monkeypatch.setattr(api.Propagation, "explain", fails)
    out = tmp_path / "out"
    assert _explain(out, _picture(tmp_path / "cat.png")) == 2
    assert "not finite: NaN logits" in _one_error_line(capsys.readouterr().err)
    assert json.loads((out / "summary.json").read_text())["images"] == []


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")])
def test_out_of_memory_is_one_line(tmp_path, monkeypatch, capsys, error):
    def fails(self, inputs, target=None, layer=None):
        raise error
    monkeypatch.setattr(api.Propagation, "explain", fails)
    assert _explain(tmp_path / "out", _picture(tmp_path / "cat.png")) == 2
    assert "out of memory explaining 1 images" in _one_error_line(capsys.readouterr().err)


def test_images_are_read_batch_by_batch(tmp_path, monkeypatch, capsys):
    paths = [_picture(tmp_path / f"{i}.png") for i in range(4)]
    events = []
    real_open, real_explain = Image.open, api.Propagation.explain

    def logged_open(*args, **kwargs):
        events.append("read")
        return real_open(*args, **kwargs)

    def logged_explain(self, inputs, target=None, layer=None):
        events.append(f"explain {len(inputs)}")
        return real_explain(self, inputs, target, layer)
    monkeypatch.setattr(Image, "open", logged_open)
    monkeypatch.setattr(api.Propagation, "explain", logged_explain)
    assert _explain(tmp_path / "out", *paths, "--batch-size", "2") == 0
    assert events == ["read", "read", "explain 2", "read", "read", "explain 2"]


def test_rerun_leaves_nothing_of_the_last_run(tmp_path, capsys):
    out = tmp_path / "out"
    assert _explain(out, _picture(tmp_path / "cat.png")) == 0
    first = json.loads((out / "summary.json").read_text())["images"][0]
    mine = out / "notes.txt"
    mine.write_text("the user's own file")
    outside = _picture(tmp_path / "outside.png")
    summary = json.loads((out / "summary.json").read_text())
    summary["images"].append({"heatmap": str(outside), "overlay": str(mine)})
    (out / "summary.json").write_text(json.dumps(summary))
    bad = tmp_path / "bad.png"
    bad.write_text("no image")
    assert _explain(out, bad) == 1
    assert not Path(first["heatmap"]).exists() and not Path(first["overlay"]).exists()
    assert mine.exists() and outside.exists()
    assert (out / "summary.csv").read_text().splitlines() == [",".join(
        f.name for f in dataclasses.fields(explain_command.Row))]
    again = json.loads((out / "summary.json").read_text())
    assert again["images"] == [] and again["skipped"][0]["file"] == str(bad)


def test_summary_json_is_strict(tmp_path):
    row = explain_command.Row("pic", "pic.png", "cat", float("nan"), "cat", 1, float("inf"), 0.0, 0.0, 0.0,
                  "pic_heatmap.png", "pic_overlay.png")
    explain_command.write_summary(tmp_path, "m", "rap", [row], [])

    def refuse(name):
        raise AssertionError(f"{name} in summary.json")
    image = json.loads((tmp_path / "summary.json").read_text(), parse_constant=refuse)["images"][0]
    assert image["probability"] is None and image["logit"] is None and image["positive"] == 0.0


def test_interrupt_is_one_line_and_leaves_a_summary(tmp_path, monkeypatch, capsys):
    def interrupted(self, inputs, target=None, layer=None):
        raise KeyboardInterrupt
    monkeypatch.setattr(api.Propagation, "explain", interrupted)
    assert _explain(tmp_path / "out", _picture(tmp_path / "cat.png")) == 130
    assert capsys.readouterr().err.strip() == "relprop: interrupted"
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["images"] == []


@pytest.mark.parametrize("method", ["lrp-epsilon-plus-flat", "integrated-gradients"])
def test_method_option_explains_with_that_method(offline, tmp_path, capsys, method):
    out = tmp_path / "out"
    picture = _picture(tmp_path / "cat.png")
    assert cli.main(["explain", str(picture), "--model", "efficientnet_lite0", "--method", method,
                     "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method
    assert f"method: {method}" in capsys.readouterr().out
    from relprop import explain, models
    model, preprocess, _ = models.load("efficientnet_lite0")
    from relprop.images import load_image
    expected = explain(model, preprocess(load_image(picture)).unsqueeze(0), method=method)
    row = summary["images"][0]
    assert abs(row["relevance_sum"] - float(expected.relevance.sum())) <= 1e-4 * max(
        1.0, abs(row["relevance_sum"]))


def test_unknown_method_is_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["explain", "--method", "lrp"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'lrp'" in err and "Traceback" not in err


def test_compare_writes_a_grid_overlays_and_json(offline, tmp_path, capsys):
    out = tmp_path / "cmp"
    pictures = [str(_picture(tmp_path / "cat.png")), str(_picture(tmp_path / "cup.png", "coffee"))]
    assert cli.main(["compare", *pictures, "--model", "efficientnet_lite0",
                     "--methods", "rap,lrp-epsilon-plus,gradient", "--out", str(out)]) == 0
    summary = json.loads((out / "compare.json").read_text())
    assert summary["methods"] == ["rap", "lrp-epsilon-plus", "gradient"]
    assert [r["image"] for r in summary["images"]] == ["cat", "cup"]
    for record in summary["images"]:
        rap = record["methods"]["rap"]
        assert abs(rap["relevance_sum"] - record["score"]) <= 1e-3 * abs(record["score"])
        for m in summary["methods"]:
            assert Image.open(record["methods"][m]["overlay"]).size == (224, 224)
    grid = Image.open(out / "compare.png")
    assert grid.width > 3 * grid.height / 2  # 4 columns, 2 rows
    assert np.asarray(grid.convert("L")).std() > 10  # not a blank picture


def test_ctrl_c_in_compare_keeps_the_finished_images(offline, tmp_path, monkeypatch, capsys):
    """Ctrl+C during the second image: exit 130, and compare.json and the grid hold the first."""
    from relprop.cli import compare
    out = tmp_path / "cmp"
    pictures = [str(_picture(tmp_path / "cat.png")), str(_picture(tmp_path / "cup.png", "coffee"))]
    calls = []
    real = compare.explain_batch

    def interrupted(explainer, x, target):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(explainer, x, target)
    monkeypatch.setattr(compare, "explain_batch", interrupted)
    assert cli.main(["compare", *pictures, "--model", "efficientnet_lite0", "--methods", "rap",
                     "--batch-size", "1", "--out", str(out)]) == 130
    assert "interrupted" in capsys.readouterr().err
    summary = json.loads((out / "compare.json").read_text())
    assert [r["image"] for r in summary["images"]] == ["cat"] and summary["interrupted"]
    assert (out / "compare.png").exists() and (out / "cat_rap.png").exists()


def test_compare_refuses_unknown_methods_before_any_work(capsys):
    assert cli.main(["compare", "--methods", "rap,lrp"]) == 2
    err = capsys.readouterr().err
    assert "--methods: unknown lrp; choose from rap, rap-stable, lrp-epsilon" in err
    assert len(err.strip().splitlines()) == 1


def test_layer_option_writes_the_layers_map(offline, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["explain", str(_picture(tmp_path / "cat.png")), "--model",
                     "efficientnet_lite0", "--layer", "_conv_head", "--out", str(out)]) == 0
    row = json.loads((out / "summary.json").read_text())["images"][0]
    assert Image.open(row["overlay"]).size == (224, 224)
    assert abs(row["relevance_sum"] - row["logit"]) <= 1e-3 * abs(row["logit"])  # RAP conserves


def test_unknown_layer_fails_before_any_image(capsys):
    assert cli.main(["explain", "--model", "efficientnet_lite0", "--layer", "nope"]) == 2
    assert "layer 'nope' is neither a module path" in capsys.readouterr().err
