"""relprop inside its neighbours' tools (issue 19): Quantus runs its metrics on
``relprop.quantus.explain_func``, and Captum's visualiser and NoiseTunnel take
``relprop.captum.RAP``."""
import numpy as np
import pytest
import quantus
import torch
import torchvision

import relprop
from relprop.evaluate.localisation import localisation



@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 32, 32, generator=g), np.array([3, 1, 2, 0])


def test_quantus_metrics_run_on_relprop_and_agree_with_relprop(model, batch):
    from relprop.quantus import explain_func
    x, y = batch
    kwargs = {"method": "rap"}
    found = explain_func(model, x.numpy(), y, **kwargs)
    heat = relprop.explain(model, x, torch.as_tensor(y), method="rap").heatmap
    assert found.shape == (4, 1, 32, 32) and found.dtype == np.float32
    assert np.allclose(found[:, 0], heat.numpy(), atol=1e-6)

    # the pointing game: a mask around each map's peak for images 0 and 1, away from it for 2, 3
    masks = np.zeros((4, 1, 32, 32))
    for i in range(4):
        r, c = np.unravel_index(heat[i].numpy().argmax(), (32, 32))
        if i < 2:
            masks[i, 0, max(r - 2, 0):r + 3, max(c - 2, 0):c + 3] = 1
        else:
            masks[i, 0] = 1
            masks[i, 0, max(r - 2, 0):r + 3, max(c - 2, 0):c + 3] = 0
    pointing = quantus.PointingGame(disable_warnings=True, display_progressbar=False)(
        model=model, x_batch=x.numpy(), y_batch=y, a_batch=None, s_batch=masks,
        explain_func=explain_func, explain_func_kwargs=kwargs)
    ours = localisation(heat.double(), torch.from_numpy(masks[:, 0] > 0))["pointing"]
    assert [bool(p) for p in pointing] == [True, True, False, False] == [bool(v) for v in ours]

    # sparseness (the Gini index of |a|), against its formula on relprop's own map
    sparseness = quantus.Sparseness(abs=True, normalise=False, disable_warnings=True,
                                    display_progressbar=False)(
        model=model, x_batch=x.numpy(), y_batch=y, a_batch=None, explain_func=explain_func,
        explain_func_kwargs=kwargs)
    a = np.sort(np.abs(heat.numpy().reshape(4, -1)), axis=1) + 1e-7  # Quantus adds 1e-7
    n = a.shape[1]
    k = np.arange(1, n + 1)
    gini = ((2 * k - n - 1) * a).sum(1) / (n * a.sum(1))
    assert np.allclose(sparseness, gini, atol=1e-5)


def test_quantus_options_reach_the_method_and_bad_axes_are_refused(model, batch):
    from relprop.quantus import explain_func
    x, y = batch
    full = explain_func(model, x, y, method="rap-stable", reduce_axes=(), epsilon=0.5)
    expected = relprop.explain(model, x, torch.as_tensor(y), method="rap-stable",
                               epsilon=0.5).relevance
    assert full.shape == (4, 3, 32, 32) and np.allclose(full, expected.numpy(), atol=1e-6)
    assert not np.allclose(full, explain_func(model, x, y, method="rap-stable", reduce_axes=()),
                           atol=1e-6)  # the option changed something
    with pytest.raises(ValueError, match="batch axis"):
        explain_func(model, x, y, reduce_axes=(0,))


def test_captum_takes_relprop_as_an_attribution(model, batch):
    from captum.attr import Attribution, NoiseTunnel
    from captum.attr import visualization as viz

    from relprop.captum import RAP, RelpropAttribution
    x, _ = batch
    x64, m64 = x.double(), torchvision.models.resnet18(num_classes=10).eval().double()
    rap = RAP(m64)
    assert isinstance(rap, Attribution) and rap.has_convergence_delta()
    attributions, delta = rap.attribute(x64, target=3, return_convergence_delta=True)
    assert torch.equal(attributions, relprop.explain(m64, x64, 3, method="rap").relevance)
    assert delta.abs().max() < 1e-10  # RAP conserves: Captum's delta is 0 in float64
    score = m64(x64)[:, 3].detach()
    assert torch.allclose(rap.compute_convergence_delta(2 * attributions, x64, 3),
                          2 * attributions.flatten(1).sum(1) - score)  # sum - score, one forward
    assert isinstance(rap.attribute((x64,), target=3), tuple)  # Captum's tuple convention

    smoothed = NoiseTunnel(RelpropAttribution(model, "rap-stable")).attribute(
        x, target=3, nt_type="smoothgrad", nt_samples=3, stdevs=0.01)
    plain = relprop.explain(model, x, 3, method="rap-stable").relevance
    assert smoothed.shape == x.shape and not torch.equal(smoothed, plain)
    assert torch.nn.functional.cosine_similarity(smoothed.flatten(), plain.flatten(), 0) > 0.5

    figure, axis = viz.visualize_image_attr(
        attributions[0].permute(1, 2, 0).float().numpy(),
        x[0].permute(1, 2, 0).clamp(0, 1).numpy(), method="blended_heat_map", sign="all",
        use_pyplot=False)
    assert axis.images  # the heat map was drawn
    with pytest.raises(ValueError, match="one input"):
        rap.attribute((x64, x64), target=3)


def test_an_explanation_draws_itself_for_notebooks(model, batch, tmp_path):
    """``_repr_png_`` (Jupyter's inline picture), ``save`` and ``figure(images=...)``: per image
    the input, the map and the overlay."""
    import io

    from PIL import Image
    x, _ = batch
    before = x.clone()
    explanation = relprop.explain(model, x, 3)
    png = Image.open(io.BytesIO(explanation._repr_png_()))
    assert png.format == "PNG" and png.height > png.width  # 4 rows of 3 panels
    explanation.save(tmp_path / "e.png")
    assert Image.open(tmp_path / "e.png").size == png.size
    red = [Image.new("RGB", (32, 32), (255, 0, 0))] * 4
    figure = explanation.figure(images=red, max_images=2)
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3]
    height = pixels.shape[0]
    for row, axes in enumerate(np.reshape(figure.axes, (2, 3))):
        box = axes[0].get_window_extent()  # display coordinates: origin at the bottom
        centre = pixels[int(height - (box.y0 + box.y1) / 2), int((box.x0 + box.x1) / 2)]
        assert tuple(centre) == (255, 0, 0), row  # the picture given, not the inputs
    assert torch.equal(x, before)
    flat = relprop.explain(torch.nn.Sequential(torch.nn.Linear(5, 2)).eval(), torch.randn(3, 5), 0)
    assert flat._repr_png_() is None  # Jupyter then shows the plain repr, no traceback
    with pytest.raises(ValueError, match="only spatial maps can be drawn"):
        flat.figure()
    layer = relprop.explain(model, x, 3, layer="layer2")  # an 8x8 map: blocks over the input
    without_inputs = relprop.Explanation(layer.relevance, layer.target, layer.score,
                                         layer.logits, "rap-stable")
    with pytest.raises(ValueError, match="pass images="):
        without_inputs.figure()
    drawn = layer.figure(max_images=1)
    assert drawn.axes[1].images[0].get_array().shape[:2] == (32, 32)
