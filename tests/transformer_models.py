"""Transformers for the tests, with random weights that make every part matter: torchvision
sets the ViT head to zeros, which would give a score of 0, so heads are drawn again."""
import torch.nn as nn
import torchvision


def _randomise_heads(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Linear) and not module.weight.detach().any():
            nn.init.normal_(module.weight, std=0.02)
            nn.init.normal_(module.bias, std=0.02)
    return model


def build_vit(spec: str) -> torchvision.models.VisionTransformer:
    """``vit_b_16`` or ``small``: a 2-layer ViT on 32x32 images."""
    if spec == "small":
        model = torchvision.models.VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
            num_classes=10)
    else:
        model = torchvision.models.get_model(spec)
    return _randomise_heads(model)


def build_small(name: str) -> tuple[nn.Module, int]:
    """A small model of each transformer family relprop explains, and the input size it takes:
    the same ops as the full-size builders, in seconds."""
    from torchvision.models import maxvit, swin_transformer as swin
    if name == "vit":
        return build_vit("small"), 32
    if name in ("swin", "swin_v2"):
        v2 = name == "swin_v2"
        model = swin.SwinTransformer(
            patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[4, 4],
            stochastic_depth_prob=0.0, num_classes=10,
            block=swin.SwinTransformerBlockV2 if v2 else swin.SwinTransformerBlock,
            downsample_layer=swin.PatchMergingV2 if v2 else swin.PatchMerging)
        return model, 36  # 9x9 patches: padded to whole windows, shifted windows masked
    if name == "maxvit":
        return maxvit.MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2,
                             block_channels=[16, 32], block_layers=[1, 1], head_dim=8,
                             stochastic_depth_prob=0.0, num_classes=10), 32
    import timm
    arch = {"timm-vit": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}),
            "timm-deit": ("deit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}),
            "timm-deit-distilled": ("deit_tiny_distilled_patch16_224",  # two heads averaged
                                    {"img_size": 32, "patch_size": 8}),
            "timm-swin": ("swin_tiny_patch4_window7_224",
                          {"img_size": 32, "window_size": 4, "embed_dim": 16,
                           "depths": (2, 2), "num_heads": (2, 2)})}[name]
    return _randomise_heads(timm.create_model(arch[0], pretrained=False, num_classes=10,
                                              **arch[1])), 32


SMALL = ("vit", "swin", "swin_v2", "maxvit", "timm-vit", "timm-deit", "timm-deit-distilled",
         "timm-swin")
