"""The synthetic detection set (known masks) and its evaluation (issue 25)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from relprop.detection import iou
from relprop.evaluate import detection as measures, synthetic, synthetic_detection as S


def test_pictures_are_deterministic_and_their_masks_are_the_drawn_shapes():
    a, b = S.sample(5), S.sample(5)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.labels == b.labels
    assert not np.array_equal(np.asarray(S.sample(6).image), np.asarray(a.image))
    for index in range(20):
        p = S.sample(index)
        assert S.COUNT[0] <= len(p.labels) < S.COUNT[1]
        assert p.masks.shape == (len(p.labels), S.SIZE, S.SIZE)
        assert not (p.masks.sum(0) > 1).any()  # apart from each other
        for label, box, mask in zip(p.labels, p.boxes, p.masks):
            assert 0 <= label < len(synthetic.CLASSES)
            ys, xs = np.nonzero(mask)
            assert box[0] <= xs.min() and xs.max() < box[2]  # the mask lies in its box
            assert box[1] <= ys.min() and ys.max() < box[3]
            pixels = np.asarray(p.image)[mask]
            assert (pixels == pixels[0]).all()  # one colour: the shape is what was painted
        for i in range(len(p.boxes)):
            assert all(iou(p.boxes[i], p.boxes[j]) == 0 for j in range(i))


def test_a_detection_is_matched_to_its_own_shape_by_class_and_overlap():
    p = S.sample(0)
    box, label = p.boxes[0], p.labels[0] + 1
    assert measures.matched(box, label, p) == 0
    assert measures.matched(box, label % len(synthetic.CLASSES) + 1, p) != 0
    shifted = (box[0] + 30, box[1] + 30, box[2] + 30, box[3] + 30)
    assert measures.matched(shifted, label, p) is None


def test_mean_average_precision_is_one_for_the_truth_and_low_for_nonsense():
    """The mAP is computed by hand (VOC's all-point area): checked on a detector that returns
    the true shapes, and on one that returns a box nowhere near them."""
    class Oracle(torch.nn.Module):
        def __init__(self, truthful):
            super().__init__()
            self.truthful, self.calls = truthful, 0

        def forward(self, images):
            p = S.sample(S.TEST_START + self.calls)
            self.calls += 1
            boxes = torch.tensor(p.boxes, dtype=torch.float32)
            if not self.truthful:
                boxes = boxes * 0 + torch.tensor([0.0, 0.0, 3.0, 3.0])
            return [{"boxes": boxes, "labels": torch.tensor(p.labels) + 1,
                     "scores": torch.ones(len(p.labels))}]
    assert S.mean_average_precision(Oracle(True)) == pytest.approx(1.0)
    assert S.mean_average_precision(Oracle(False)) == pytest.approx(0.0)


@pytest.mark.slow
def test_evaluate_on_the_detection_set_trains_once_and_measures_every_detection(
        tmp_path, monkeypatch, capsys):
    """``relprop evaluate --data synthetic:shapes-detection`` end to end: the detector is trained
    on the spot to the stated mAP@0.5 (measured 0.988 with one thread, 0.992 with two), once
    (then it loads from the cache); every explained detection is measured against
    the masks, rap-stable conserving; and RAP's claim holds: the positive relevance is on the
    detection's own shape far more than on the other shapes."""
    from relprop import cli
    monkeypatch.setenv("RELPROP_CACHE", str(tmp_path / "cache"))
    run = ["evaluate", "--data", "synthetic:shapes-detection", "--limit", "4", "--methods",
           "rap-stable,gradient", "--steps", "4"]
    assert cli.main([*run, "--out", str(tmp_path / "first")]) == 0
    err = capsys.readouterr().err
    assert "training the synthetic detector on shapes-detection once" in err
    assert float(err.split("mAP@0.5 ")[1].split()[0]) >= 0.95
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    trained, again = S.trained()  # from the cache now: the same network, the same figure
    assert "training" not in capsys.readouterr().err
    assert again == pytest.approx(float(err.split("mAP@0.5 ")[1].split()[0]), abs=1e-3)
    first = json.loads((tmp_path / "first" / "metrics.json").read_text())
    figures = first["methods"]["rap-stable"]
    assert figures["detections"] >= 8 and figures["max_delta"] < 1e-3
    assert figures["on_object"] > 0.5 > figures["on_others"]
    assert 0 <= figures["pointing"] <= 1
    rows = (tmp_path / "first" / "per_detection.csv").read_text().splitlines()
    assert rows[0].startswith("picture,method,detection")
    assert len(rows) == 1 + 2 * figures["detections"]  # a row per detection and method
    assert (tmp_path / "first" / "metrics.md").read_text().startswith("Synthetic detection")
    from PIL import Image
    with Image.open(tmp_path / "first" / "examples.png") as picture:
        assert picture.format == "PNG"
    # the trained detector is a registry entry: explain takes it by name, from the cache
    image = tmp_path / "shapes.png"
    S.sample(S.EVALUATE_START).image.save(image)
    assert cli.main(["explain", "--model", "synthetic-detector", "--detections", "2", "--out",
                     str(tmp_path / "explained"), str(image)]) == 0
    out = capsys.readouterr()
    assert "training" not in out.err and "shapes_det" in out.out
    assert (tmp_path / "explained" / "shapes_detections.png").is_file()
    assert len(list((tmp_path / "explained").glob("shapes_det*_overlay.png"))) == 2
    assert cli.main(["explain", "--model", "synthetic-detector", "--masks", "--out",
                     str(tmp_path / "masks"), str(image)]) != 0  # a Faster R-CNN has no masks
    err = capsys.readouterr().err.strip()
    assert "returns no masks" in err and len(err.splitlines()) == 1
