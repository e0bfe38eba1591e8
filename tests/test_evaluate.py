"""The evaluation metrics against known answers, an independent slow form and Quantus."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from relprop.evaluate import perturbation as pert
from relprop.evaluate.data import box_mask, list_images, read_boxes
from relprop.evaluate.localisation import localisation
from relprop.evaluate.stability import correlation, stability
from relprop.plot import input_view


class RegionSum(nn.Module):
    """Class 0's logit is the sum of one image window; class 1's is 0."""

    def __init__(self, rows, cols):
        super().__init__()
        self.rows, self.cols = rows, cols

    def forward(self, x):
        inside = x[:, :, self.rows, self.cols].flatten(1).sum(1)
        return torch.stack([inside, torch.zeros_like(inside)], 1)


def logit_and_probability(model, target):
    def score(inputs, image):
        s = model(inputs)
        t = int(target[image])
        return torch.stack([s[:, t], s.softmax(1)[:, t]], 1)
    return score


def test_a_perfect_attribution_has_the_known_aopc():
    # 18x18 image, 3x3 regions (36); the model reads region 7 (rows 3..5, columns 3..5)
    torch.manual_seed(0)
    model = RegionSum(slice(3, 6), slice(3, 6))
    x = torch.rand(2, 3, 18, 18) + 0.5
    target = torch.zeros(2, dtype=torch.long)
    heat = torch.zeros(2, 18, 18)
    heat[:, 3:6, 3:6] = x[:, :, 3:6, 3:6].sum(1)  # the exact contribution of every pixel
    settings = pert.Settings(region=3, steps=10, fill="black", batch_size=7)
    low, high = torch.zeros(2, 3), torch.ones(2, 3)
    fill = pert.fill_values(x, "black", low, high, [])
    generators = [pert.image_generator(0, i) for i in range(2)]
    random = torch.stack([pert.random_ranking(36, g) for g in generators])
    orders = ["morf", "negative-first", "lerf"]
    rankings = torch.stack([pert.rank_regions(heat, 3, o) for o in orders] + [random])
    curves = pert.curves(logit_and_probability(model, target), x, rankings, fill, settings)
    f0 = heat.flatten(1).sum(1).double()
    aopc = pert.aopc(curves[..., 0])
    L = settings.steps
    torch.testing.assert_close(aopc[0], f0 * L / (L + 1))  # morf: gone at the first step
    assert torch.equal(aopc[1], torch.zeros(2, dtype=torch.float64))  # last in both orders
    assert torch.equal(aopc[2], torch.zeros(2, dtype=torch.float64))
    # random: the score is gone from the step at which region 7 comes up
    step_of_region = [int((random[i] == 7).nonzero()) + 1 for i in range(2)]
    expected = torch.stack([f0[i] * max(0, L + 1 - s) / (L + 1)
                            for i, s in enumerate(step_of_region)])
    torch.testing.assert_close(aopc[3], expected)
    # the probability of class 0 among logits (f, 0) is sigmoid(f)
    torch.testing.assert_close(curves[0, :, 0, 1], torch.sigmoid(f0))
    torch.testing.assert_close(curves[0, :, 1, 1], torch.full((2,), 0.5, dtype=torch.float64))


def slow_curve(model, x, target, heat, region, steps, fill, order):
    """Region perturbation written out region by region: the independent form."""
    h, w = heat.shape
    boxes = [(r, c) for r in range(0, h, region) for c in range(0, w, region)]
    sums = [float(heat[r:r + region, c:c + region].double().sum()) for r, c in boxes]
    key = {"morf": lambda i: (-sums[i], i), "negative-first": lambda i: (sums[i], i),
           "lerf": lambda i: (abs(sums[i]), i)}[order]
    ranked = sorted(range(len(boxes)), key=key)
    current, scores = x.clone(), [float(model(x[None])[0, target])]
    for i in ranked[:steps]:
        r, c = boxes[i]
        current[:, r:r + region, c:c + region] = fill[:, r:r + region, c:c + region]
        scores.append(float(model(current[None])[0, target]))
    return torch.tensor(scores, dtype=torch.float64)


def small_cnn():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, 5)).double().eval()


@pytest.mark.parametrize("fill", pert.FILLS)
def test_batched_curves_equal_the_region_by_region_form(fill):
    model = small_cnn()
    torch.manual_seed(2)
    x = torch.rand(3, 3, 20, 20, dtype=torch.float64)  # 20 = 6 whole regions of 3 and a cut one
    heat = torch.randn(3, 20, 20, dtype=torch.float64)
    target = torch.tensor([0, 3, 4])
    generators = [pert.image_generator(5, i) for i in range(3)]
    fills = pert.fill_values(x, fill, x.amin((2, 3)), x.amax((2, 3)), generators)
    orders = ["morf", "negative-first", "lerf"]
    rankings = torch.stack([pert.rank_regions(heat, 3, o) for o in orders])
    settings = pert.Settings(region=3, steps=12, fill=fill, batch_size=5)
    with torch.no_grad():
        curves = pert.curves(logit_and_probability(model, target), x, rankings, fills, settings)
        for o, order in enumerate(orders):
            for i in range(3):
                expected = slow_curve(model, x[i], target[i], heat[i], 3, 12, fills[i], order)
                torch.testing.assert_close(curves[o, i, :, 0], expected, rtol=1e-12, atol=1e-12)


def test_fill_values_stay_in_range_and_follow_the_image_seed():
    x = torch.rand(2, 3, 8, 8)
    low, high = torch.tensor([[-1.0, 0.0, 2.0]] * 2), torch.tensor([[1.0, 0.5, 3.0]] * 2)
    noise = pert.fill_values(x, "uniform", low, high, [pert.image_generator(0, i) for i in (4, 9)])
    assert ((noise >= low[:, :, None, None]) & (noise <= high[:, :, None, None])).all()
    alone = pert.fill_values(x[1:], "uniform", low[1:], high[1:], [pert.image_generator(0, 9)])
    assert torch.equal(alone[0], noise[1])  # image 9's noise does not depend on its batch
    assert not torch.equal(noise[0], noise[1])
    mean = pert.fill_values(x, "mean", low, high, [])
    torch.testing.assert_close(mean[:, :, 3, 5], x.mean((2, 3)))
    black = pert.fill_values(x, "black", low, high, [])
    assert torch.equal(black[:, :, 0, 0], low)


def test_settings_refuse_more_steps_than_regions():
    with pytest.raises(ValueError, match="only 4 regions"):
        pert.Settings(region=5, steps=5).check(10, 10)


def test_region_perturbation_equals_quantus():
    quantus = pytest.importorskip("quantus")
    model = small_cnn().float()
    torch.manual_seed(3)
    x = torch.rand(4, 3, 18, 18)
    x[:, :, 0, 0] = 0  # Quantus's black is the image's minimum; relprop's is the range's low end
    heat = torch.randn(4, 18, 18)
    target = model(x).argmax(1)
    steps = 15
    for order in ("morf", "negative-first"):
        metric = quantus.RegionPerturbation(patch_size=3, regions_evaluation=steps, order=(
            "lerf" if order == "negative-first" else "morf"), perturb_baseline="black",
            normalise=False, abs=False, disable_warnings=True, display_progressbar=False)
        theirs = np.array(metric(model=model, x_batch=x.numpy(), y_batch=target.numpy(),
                                 a_batch=heat[:, None].numpy(), softmax=False, device="cpu"))
        fill = pert.fill_values(x, "black", torch.zeros(4, 3), torch.ones(4, 3), [])
        with torch.no_grad():
            curves = pert.curves(logit_and_probability(model, target), x,
                                 pert.rank_regions(heat, 3, order)[None], fill,
                                 pert.Settings(region=3, steps=steps, fill="black"))
        ours = (curves[0, :, :1, 0] - curves[0, :, 1:, 0]).numpy()  # Quantus: f(x⁰) − f(xᵏ), k ≥ 1
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_localisation_known_answers():
    heat = torch.full((1, 10, 10), 0.25)
    heat[0, 2:6, 2:6] = 1.0
    heat[0, 9, 9] = -5.0  # negative relevance takes no part in the ratios
    mask = torch.zeros(1, 10, 10, dtype=torch.bool)
    mask[0, 2:6, 2:6] = True
    found = localisation(heat, mask, quantile=0.84)
    positive_outside = 0.25 * 83
    torch.testing.assert_close(found["outside_inside"], torch.tensor([(positive_outside / 84) / 1.0],
                                                                     dtype=torch.float64))
    torch.testing.assert_close(found["mass_inside"],
                               torch.tensor([16 / (16 + positive_outside)], dtype=torch.float64))
    assert found["pointing"].tolist() == [1.0]
    assert found["iou"].tolist() == [1.0]  # the top 16 % of pixels are the box
    missed = localisation(-heat, mask, quantile=0.84)  # maximum at (9, 9): outside
    assert missed["pointing"].tolist() == [0.0]
    empty = localisation(heat, torch.zeros_like(mask), quantile=0.5)
    assert math.isnan(empty["outside_inside"].item())


def test_boxes_from_voc_csv_and_json_are_the_same_mask(tmp_path):
    (tmp_path / "voc").mkdir()
    (tmp_path / "voc" / "pic.xml").write_text(
        "<annotation><object><name>cat</name><bndbox><xmin>3</xmin><ymin>2</ymin><xmax>6</xmax>"
        "<ymax>4</ymax></bndbox></object><object><bndbox><xmin>9</xmin><ymin>9</ymin>"
        "<xmax>10</xmax><ymax>10</ymax></bndbox></object></annotation>")
    (tmp_path / "b.csv").write_text("image,xmin,ymin,xmax,ymax\npic.jpg,3,2,6,4\npic.jpg,9,9,10,10\n")
    (tmp_path / "b.json").write_text(json.dumps({"pic": [[3, 2, 6, 4], [9, 9, 10, 10]]}))
    masks = [np.asarray(box_mask((10, 10), read_boxes(source)["pic"])) > 0
             for source in (tmp_path / "voc", tmp_path / "b.csv", tmp_path / "b.json")]
    expected = np.zeros((10, 10), bool)
    expected[1:4, 2:6] = True  # VOC's 1-based inclusive corners
    expected[8:10, 8:10] = True
    for mask in masks:
        np.testing.assert_array_equal(mask, expected)


def test_a_mask_lands_on_the_pixels_the_model_sees():
    # a 20x10 picture, resized to short side 10 (unchanged) and centre-cropped to 10x10: the crop
    # starts at column 5, so a box over columns 7..11 lands on columns 2..6
    mask = box_mask((20, 10), [(8, 1, 12, 10)])
    seen = np.asarray(input_view(mask, 10, 10, Image.NEAREST)) > 0
    expected = np.zeros((10, 10), bool)
    expected[:, 2:7] = True
    np.testing.assert_array_equal(seen, expected)


def test_image_folder_tree_gives_labels(tmp_path):
    names = ["tench", "goldfish", "shark"]
    for folder in ("goldfish", "2"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / folder / "a.png")
    items = list_images(tmp_path, names)
    assert [(i.label, i.name) for i in items] == [(2, "a"), (1, "a")]
    flat = tmp_path / "goldfish"
    assert [i.label for i in list_images(flat, names)] == [None]


def test_stability_of_a_map_that_ignores_noise_and_of_one_that_follows_it():
    torch.manual_seed(4)
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    heat = x.sum(1)
    fixed = stability(lambda noisy: heat, x, heat, [0, 1, 2], sigmas=(0.1,), samples=2)
    assert torch.allclose(fixed[0.1]["correlation"], torch.ones(3, dtype=torch.float64))
    assert torch.equal(fixed[0.1]["max_sensitivity"], torch.zeros(3, dtype=torch.float64))
    following = stability(lambda noisy: noisy.sum(1), x, heat, [0, 1, 2], sigmas=(1e-6, 10.0),
                          samples=2)
    assert (following[1e-6]["correlation"] > 0.999999).all()
    assert (following[10.0]["correlation"] < 0.5).all()
    assert (following[10.0]["max_sensitivity"] >= following[10.0]["avg_sensitivity"]).all()
    a = torch.randn(2, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(correlation(a, 3 * a + 1), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("name", ["AvgSensitivity", "MaxSensitivity"])
def test_sensitivity_equals_quantus_on_the_same_noise(name):
    quantus = pytest.importorskip("quantus")
    import relprop
    from relprop.evaluate.stability import noise
    model = small_cnn().float()
    torch.manual_seed(5)
    x = torch.rand(3, 3, 12, 12)
    target = model(x).argmax(1)
    sigma, samples, indices = 0.05, 3, [7, 8, 9]

    def heat_of(inputs, targets=target):
        return relprop.explain(model, inputs, targets, "gradient-x-input").heatmap.detach()

    heat = heat_of(x)
    ours = stability(heat_of, x, heat, indices, sigmas=(sigma,), samples=samples)[sigma]
    draws = iter(noise(x.shape[1:], (sigma,), samples, 0, indices).float())

    def perturb(arr, indices, **kwargs):  # Quantus asks for one batch of noisy inputs per sample
        return arr + sigma * next(draws).reshape(arr.shape).numpy()

    def explain_func(model, inputs, targets, **kwargs):
        return heat_of(torch.as_tensor(inputs), torch.as_tensor(targets))[:, None].numpy()

    metric = getattr(quantus, name)(nr_samples=samples, perturb_func=perturb, normalise=False,
                                    abs=False, return_nan_when_prediction_changes=False,
                                    disable_warnings=True, display_progressbar=False)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=target.numpy(),
                    a_batch=heat[:, None].numpy(), explain_func=explain_func, device="cpu")
    key = "avg_sensitivity" if name == "AvgSensitivity" else "max_sensitivity"
    np.testing.assert_allclose(ours[key].numpy(), np.array(theirs), rtol=1e-5)
