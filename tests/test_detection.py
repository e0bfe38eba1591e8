"""Detectors (rap-spec §9.1, §9.4): every torchvision detector family at a small size with
random weights, explained detection by detection in float64.

What could go wrong and is checked here: relevance lost on the way (Σ R = the logit), the
wrong logit (its squashing must give the model's own score), k detections of one forward pass
differing from k single calls, a bad target silently explaining something else, the user's
images changed."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torchvision.models import detection as tv

import relprop
from relprop.detection import BoxTarget, DetectionExplainer, Detections, Mask, scene

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# Small enough to run in seconds: few proposals and detections, images of 64-80 pixels.
_RCNN = dict(min_size=64, max_size=80, rpn_pre_nms_top_n_test=40, rpn_post_nms_top_n_test=16,
             box_detections_per_img=8, box_score_thresh=0.0)
_ONE_STAGE = dict(min_size=64, max_size=80, topk_candidates=16, detections_per_img=8,
                  score_thresh=0.0)
_SSD = dict(topk_candidates=16, detections_per_img=8, score_thresh=0.0)
DETECTORS = {
    "fasterrcnn_resnet50_fpn": _RCNN,
    "fasterrcnn_resnet50_fpn_v2": _RCNN,
    "fasterrcnn_mobilenet_v3_large_fpn": _RCNN,
    "maskrcnn_resnet50_fpn": _RCNN,
    "retinanet_resnet50_fpn": _ONE_STAGE,
    "fcos_resnet50_fpn": _ONE_STAGE,
    "ssdlite320_mobilenet_v3_large": _SSD,
    "ssd300_vgg16": _SSD,
}
SLOW = {"fasterrcnn_resnet50_fpn_v2", "ssd300_vgg16", "maskrcnn_resnet50_fpn"}
_CACHE: dict = {}


def recorded(name: str):
    """The detector, its image and the image's scene (recorded once for the tests that do
    not test the recording path itself)."""
    model, x = detector(name)
    key = ("scene", name)
    if key not in _CACHE:
        _CACHE[key] = scene(model, x)
    return model, x, _CACHE[key]


def detector(name: str):
    """The detector (float64, random weights, no all-zero parameter) and one image."""
    if name not in _CACHE:
        torch.manual_seed(0)
        model = getattr(tv, name)(weights=None, weights_backbone=None, **DETECTORS[name])
        model = model.eval().double()
        with torch.no_grad():  # zero-initialised heads would score every box alike
            for p in model.parameters():
                if (p == 0).all():
                    p.normal_(0, 0.01)
        x = torch.rand(1, 3, 60, 76, dtype=torch.float64)
        _CACHE[name] = (model, x)
    return _CACHE[name]


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


# SSD300's VGG has no residual addition, where rap-stable is rap (rap-spec §7.5): one method
_CONSERVING = [(n, m) for n in DETECTORS for m in ("rap", "rap-stable")
               if (n, m) != ("ssd300_vgg16", "rap-stable")]


@pytest.mark.parametrize("name, method", [
    pytest.param(n, m, marks=pytest.mark.slow) if n in SLOW else (n, m) for n, m in _CONSERVING])
def test_relevance_sums_to_the_logit_in_float64(name, method):
    model, x, found = recorded(name)
    picked = Detections(top=2).select(found.detections, 0)
    e = DetectionExplainer(model, method).explain_scene(found, x, picked)
    assert e.relevance.shape == (2, *x.shape[1:])
    assert torch.isfinite(e.relevance).all() and e.relevance.abs().sum() > 0
    tol = 1e-9 * e.score.abs().clamp(min=1)
    assert (e.delta.abs() <= tol).all(), (e.delta, e.score)
    assert [d.logit for d in e.detections] == pytest.approx(e.score.tolist(), abs=1e-12)


@pytest.mark.parametrize("name", _params(DETECTORS))
def test_the_explained_logit_gives_the_models_score(name):
    """sigmoid(logit) is RetinaNet's score, softmax of its row Faster R-CNN's and SSD's; FCOS
    multiplies by a centre-ness in (0, 1) under a square root, so its score² is below."""
    model, x, found = recorded(name)
    found = found.detections
    with torch.no_grad():
        reported = model(x)[0]
    assert len(found) == len(reported["scores"]) > 0
    for d, score, label, box in zip(found, reported["scores"], reported["labels"],
                                    reported["boxes"]):
        assert d.score == pytest.approx(float(score), abs=1e-12)
        assert d.label == int(label) and d.box == pytest.approx(box.tolist(), abs=1e-9)
        if d.row is not None:  # a softmax over the row
            row = torch.tensor(d.row, dtype=torch.float64)
            assert math.exp(d.logit) / row.exp().sum() == pytest.approx(d.score, rel=1e-9)
            assert d.logit in d.row
        elif name.startswith("fcos"):
            assert 0 < d.score ** 2 < torch.sigmoid(torch.tensor(d.logit, dtype=torch.float64))
        else:
            assert torch.sigmoid(torch.tensor(d.logit, dtype=torch.float64)) == pytest.approx(d.score, rel=1e-9)


@pytest.mark.parametrize("name", ["fasterrcnn_mobilenet_v3_large_fpn", "retinanet_resnet50_fpn"])
def test_k_detections_in_one_pass_equal_k_single_calls(name):
    model, x = detector(name)
    together = relprop.explain(model, x, target=Detections(top=2), method="rap")
    for row, d in enumerate(together.detections):
        alone = relprop.explain(model, x, target=d.index, method="rap")
        assert alone.detections[0].index == d.index
        torch.testing.assert_close(together.relevance[row], alone.relevance[0], rtol=0,
                                   atol=1e-12)


@pytest.mark.slow
def test_a_mask_target_explains_the_mask_logits_of_its_pixels():
    """Mask R-CNN's mask as a region: Σ of the mask head's own logits (read from the model,
    not the recording) where its probability is above 0.5, for the detection's class; Σ R is
    that sum in float64."""
    model, x = detector("maskrcnn_resnet50_fpn")
    kept = []
    hook = model.roi_heads.mask_predictor.register_forward_hook(lambda m, i, out: kept.append(out))
    try:
        e = relprop.explain(model, x, target=Mask(Detections(top=2)), method="rap")
    finally:
        hook.remove()
    mask_logits = kept[0]  # (detections, classes, 28, 28): the model's own run
    for row, d in enumerate(e.detections):
        assert d.explained == "mask"
        tile = mask_logits[d.index, d.label]
        assert len(d.mask) == int((tile > 0).sum()) > 0
        assert float(e.score[row]) == pytest.approx(float(tile[tile > 0].sum()), rel=1e-12)
    assert (e.delta.abs() <= 1e-9 * e.score.abs().clamp(min=1)).all(), e.delta
    with pytest.raises(ValueError, match="returns no masks"):
        relprop.explain(detector("fasterrcnn_mobilenet_v3_large_fpn")[0], x, target=Mask())
    from relprop import prepare
    with pytest.raises(prepare.SetupError, match="Mask R-CNN"):
        prepare.region(None, "classification", 3, None, 224, masks=True)


def test_a_box_and_label_pick_the_detection_they_match():
    model, x, found = recorded("fasterrcnn_mobilenet_v3_large_fpn")
    third = found.detections[2]
    e = relprop.explain(model, x, target=BoxTarget(third.box, third.label), method="rap")
    assert e.detections[0].index == third.index


def test_pytorch_grad_cams_box_score_target_is_accepted_as_it_is():
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget
    model, x, found = recorded("fasterrcnn_mobilenet_v3_large_fpn")
    found = found.detections
    target = FasterRCNNBoxScoreTarget(labels=[found[1].label, found[4].label],
                                      bounding_boxes=torch.tensor([found[1].box, found[4].box]))
    e = relprop.explain(model, x, target=[target], method="rap-stable")
    assert [d.index for d in e.detections] == [1, 4]


def test_a_bad_target_is_one_clear_error():
    model, x = detector("fasterrcnn_mobilenet_v3_large_fpn")
    with pytest.raises(ValueError, match="has 8 detection"):
        relprop.explain(model, x, target=8)
    with pytest.raises(ValueError, match="no detection of image 0 matches the box"):
        relprop.explain(model, x, target=BoxTarget((0, 0, 1, 1), label=3))
    with pytest.raises(ValueError, match="a box is"):
        BoxTarget((5, 5, 1, 1))
    with pytest.raises(ValueError, match="detection target"):
        relprop.explain(model, x, target="dog")
    with pytest.raises(ValueError, match="is a detector"):
        relprop.RAP(model)
    with pytest.raises(relprop.NotApplicable, match="one batch of two"):
        relprop.explainer(model, "deeplift")  # it hooks each ReLU once per batch of two
    with pytest.raises(ValueError, match="no layer on the path"):
        relprop.explain(model, x, method="grad-cam", target_layer="backbone.nothing")


def _logit_and_layer(model, x, layer: str, position: int):
    """The model's own (not recorded) class logits at ``position`` and a layer's output, with
    the autograd graph between them."""
    kept = {}
    hooks = [model.get_submodule(layer).register_forward_hook(
                 lambda m, i, out: kept.setdefault("layer", out)),
             model.roi_heads.box_predictor.cls_score.register_forward_hook(
                 lambda m, i, out: kept.setdefault("logits", out))]
    try:
        with torch.enable_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return kept["logits"].flatten()[position], kept["layer"]


def test_grad_cam_reads_the_backbones_last_feature_map_as_the_model_computes_it():
    """Against Grad-CAM by hand on the model itself: the gradient of the class logit at the
    backbone's last stage, averaged over the map, weighting its channels."""
    import torch.nn.functional as F
    model, x, found = recorded("fasterrcnn_mobilenet_v3_large_fpn")
    assert found.feature_layer == "backbone.body.16"  # MobileNetV3's last stage, stride 32
    d = found.detections[1]
    e = DetectionExplainer(model, "grad-cam").explain_scene(found, x, [d])
    logit, a = _logit_and_layer(model, x, found.feature_layer, d.position)
    assert float(logit) == pytest.approx(d.logit, abs=1e-12)
    (g,) = torch.autograd.grad(logit, a)
    cam = (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True).clamp(min=0)
    cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False) / 3
    assert cam.abs().sum() > 0
    torch.testing.assert_close(e.relevance, cam.expand_as(x), rtol=1e-9, atol=1e-15)


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0)


class _GuidedEverywhere(torch.overrides.TorchFunctionMode):
    """Every ReLU call, module or functional, in place or not, as guided backprop's."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (F_relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_):
            return _GuidedReLU.apply(args[0])
        return func(*args, **(kwargs or {}))


F_relu = torch.nn.functional.relu


def test_guided_backprop_stops_negative_signals_at_every_relu_of_the_recording():
    """Against guided backprop by hand on the model itself, with every ReLU call (the box
    head's functional ones too) replaced by the guided one."""
    model, x, found = recorded("fasterrcnn_resnet50_fpn")
    d = found.detections[0]
    e = DetectionExplainer(model, "guided-backprop").explain_scene(found, x, [d])
    leaf = x.clone().requires_grad_()
    with _GuidedEverywhere():
        logit, _ = _logit_and_layer(model, leaf, "backbone.body.layer4", d.position)
        (expected,) = torch.autograd.grad(logit, leaf)
    plain = DetectionExplainer(model, "gradient").explain_scene(found, x, [d])
    assert not torch.allclose(e.relevance, plain.relevance)  # the rule acted
    torch.testing.assert_close(e.relevance[0], expected[0], rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("method", ["gradient", "integrated-gradients", "lrp-epsilon-plus"])
def test_every_family_explains_the_same_logit(method):
    model, x = detector("retinanet_resnet50_fpn")
    e = relprop.explain(model, x, target=Detections(top=2), method=method,
                        **({"steps": 4} if method == "integrated-gradients" else {}))
    assert e.relevance.shape == (2, *x.shape[1:]) and torch.isfinite(e.relevance).all()
    assert e.relevance.abs().sum() > 0
    assert e.score.tolist() == pytest.approx([d.logit for d in e.detections], abs=1e-12)


def test_the_users_images_and_model_are_not_changed():
    model, x = detector("fasterrcnn_mobilenet_v3_large_fpn")
    before = x.clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    relprop.explain(model, x, target=Detections(top=2), method="rap")
    assert torch.equal(x, before) and model.training
    model.eval()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_a_detector_in_float32_explains_its_top_detection():
    torch.manual_seed(0)
    model = tv.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None,
                                                 **_RCNN).eval()
    x = torch.rand(2, 3, 60, 76)
    e = relprop.explain(model, x)  # None: each image's top detection
    assert [d.image for d in e.detections] == [0, 1]
    assert (e.delta.abs() <= 1e-3 * e.score.abs().clamp(min=1)).all()
    assert torchvision.__version__  # the loader path is torchvision's own builder


def test_a_hugging_face_detr_explains_its_query_logits():
    """DETR returns its query logits as a tensor: a query's detection is its most probable
    class other than "no object", and Σ R = that class's logit."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig
    torch.manual_seed(0)
    backbone = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 32, 64],
                            depths=[1, 1, 1, 1], out_features=["stage4"])
    config = DetrConfig(use_timm_backbone=False, backbone_config=backbone, backbone=None,
                        use_pretrained_backbone=False, d_model=32, encoder_layers=1,
                        decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=5, num_labels=4)
    model = DetrForObjectDetection(config).eval().double()
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        logits = model(pixel_values=x).logits[0]
    for method in ("rap", "rap-stable"):
        e = relprop.explain(model, x, target=Detections(top=3), method=method)
        assert (e.delta.abs() <= 1e-9 * e.score.abs().clamp(min=1)).all()
        for d, score in zip(e.detections, e.score):
            query = d.position // logits.shape[-1]
            assert float(score) == pytest.approx(float(logits[query, d.label]), abs=1e-12)
            assert d.score == pytest.approx(float(logits[query].softmax(0)[d.label]), rel=1e-9)
