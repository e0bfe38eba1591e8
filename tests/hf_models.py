"""Small random Hugging Face models of each image family relprop explains, for the tests and the
coverage benchmark: the families' own classes and configs, at sizes that run in a second."""
from __future__ import annotations

import torch

SIZE = 32  # the image side every config below takes


def _vit_like(hidden=32, layers=2, heads=2):
    return dict(image_size=SIZE, patch_size=8, hidden_size=hidden, num_hidden_layers=layers,
                num_attention_heads=heads, intermediate_size=2 * hidden)


def families():
    """name -> (config class, model class, config keyword arguments)."""
    import transformers as T
    found = {
        "vit": (T.ViTConfig, T.ViTForImageClassification, _vit_like()),
        "deit": (T.DeiTConfig, T.DeiTForImageClassification, _vit_like()),
        "deit-distilled": (T.DeiTConfig, T.DeiTForImageClassificationWithTeacher, _vit_like()),
        "beit": (T.BeitConfig, T.BeitForImageClassification,
                 {**_vit_like(), "use_relative_position_bias": True, "use_mean_pooling": True}),
        "dinov2": (T.Dinov2Config, T.Dinov2ForImageClassification,
                   {**{k: v for k, v in _vit_like().items() if k != "intermediate_size"},
                    "mlp_ratio": 2}),
        "swin": (T.SwinConfig, T.SwinForImageClassification,
                 dict(image_size=SIZE, patch_size=4, embed_dim=16, depths=[1, 1],
                      num_heads=[2, 2], window_size=4)),
        "convnext": (T.ConvNextConfig, T.ConvNextForImageClassification,
                     dict(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)),
        "resnet": (T.ResNetConfig, T.ResNetForImageClassification,
                   dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                        layer_type="bottleneck")),
        "segformer": (T.SegformerConfig, T.SegformerForSemanticSegmentation,
                      dict(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                           hidden_sizes=[8, 16], num_attention_heads=[1, 2],
                           decoder_hidden_size=16, patch_sizes=[7, 3], strides=[4, 2])),
    }
    return found


def build(name: str, labels: int = 5, seed: int = 0):
    """The family's model with random weights (biases and norms drawn too), in eval mode."""
    config_class, model_class, kwargs = families()[name]
    torch.manual_seed(seed)
    model = model_class(config_class(num_labels=labels, **kwargs)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            draw_bias(module, g)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
    return model


def draw_bias(module: torch.nn.Module, g: torch.Generator) -> None:
    """A module's bias vector drawn (small, seeded), so that no rule meets only zero biases."""
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor) and bias.dim() == 1:
        bias.copy_(torch.randn(bias.shape, generator=g) * 0.05)
