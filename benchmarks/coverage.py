"""Coverage: which models relprop explains, measured.

    python benchmarks/coverage.py                 # torchvision, timm, Hugging Face
    python benchmarks/coverage.py --only hf       # one source: torchvision | timm | hf
    python benchmarks/coverage.py --limit 10      # the first ten models of each source
    python benchmarks/coverage.py --only timm --names nfnet,xcit   # a few, after a fix

What it runs, with random weights:
- every torchvision classification and segmentation builder (``torchvision.models.list_models``);
- one small model per timm architecture module (``timm.list_modules()``; the module's model
  whose name says smallest: test_, atto, femto, pico, nano, tiny, ...);
- every Hugging Face image-classification and semantic-segmentation family of the installed
  transformers, from its default config with two layers per stack.

What it records for each: explained or not (the first unsupported op, in words), which front end
captured it (torch.fx, or torch.export where fx cannot), Σ R against the score in float64 for
``rap`` and ``rap-stable`` (|Σ R − score| / max(1, |score|)), and the time of one float32
``rap-stable`` explanation after the first (so that the capture is counted once, in
``capture_s``). Writes ``benchmarks/results/coverage.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TOLERANCE = 1e-9
MAX_PARAMETERS = int(os.environ.get("RELPROP_COVERAGE_MAX_PARAMETERS", 700e6))
SMALL = ("test_", "atto", "femto", "pico", "nano", "tiny", "xxs", "xs", "small", "_s_", "mobile",
         "b0", "_t_", "_t", "18", "lite")


def _smallest(names: list[str]) -> list[str]:
    def rank(name):
        for i, word in enumerate(SMALL):
            if word in name:
                return (i, len(name), name)
        return (len(SMALL), len(name), name)
    return sorted(names, key=rank)


def torchvision_models(limit):
    import torchvision
    found = []
    for module, kind in ((torchvision.models, "classification"),
                         (torchvision.models.segmentation, "segmentation")):
        for name in torchvision.models.list_models(module=module):
            found.append((f"torchvision:{name}", kind, _torchvision_builder(name, kind)))
    return found[:limit]


def _torchvision_builder(name, kind):
    def build():
        import torchvision
        kwargs = {"weights": None}
        if kind == "segmentation":
            kwargs.update(weights_backbone=None, num_classes=5)
        elif name.startswith(("inception", "googlenet")):
            kwargs.update(aux_logits=False, init_weights=False)
        model = torchvision.models.get_model(name, **kwargs)
        if name.startswith(("vit", "swin", "maxvit")):
            return model, 224  # the size their position embeddings or windows fix
        return model, 299 if name == "inception_v3" else 64 if kind == "classification" else 96
    return build


def timm_models(limit):
    import timm
    found = []
    for module in sorted(timm.list_modules()):
        names = timm.list_models(module=module)
        if names:
            found.append((f"timm:{module}", "classification", _timm_builder(module, names)))
    return found[:limit]


def _timm_builder(module, names):
    def build():
        import timm
        errors = []
        for name in _smallest(names)[:3]:
            try:
                model = timm.create_model(name, pretrained=False, num_classes=10)
            except Exception as e:  # noqa: BLE001  (a model this timm cannot build)
                errors.append(f"{name}: {type(e).__name__}")
                continue
            size = model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
            model.relprop_name = name
            return model, _smaller_if_it_runs(model, size)
        raise RuntimeError("; ".join(errors))
    return build


LARGE_INPUT = 448  # a side above which a model is measured at 224 where it runs there


def _smaller_if_it_runs(model, size: int) -> int:
    """224 for a model made for large inputs that takes 224 too (the vision encoders of
    Gemma-4 and Qwen3 at 768: their float64 check at 768 needs more than this machine's 24 GiB
    and 300 s; the ops are the same at 224)."""
    if size <= LARGE_INPUT:
        return size
    try:
        with torch.no_grad():
            model.eval()(torch.randn(1, 3, 224, 224))
        return 224
    except Exception:  # noqa: BLE001  (it needs its own size)
        return size


def hf_models(limit):
    """Every image-classification and semantic-segmentation family of the installed
    transformers, from its default config with at most two layers per stage."""
    from transformers.models.auto import modeling_auto as auto
    found = [(f"hf:{family}", "classification", _hf_builder(family, "classification"))
             for family in auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES]
    found += [(f"hf:{family}", "segmentation", _hf_builder(family, "segmentation"))
              for family in auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES]
    return found[:limit]


def _shrunk(config):
    """Two layers per stack or stage, so that base-width models build and run in seconds."""
    staged = False
    for key in ("depths", "layer_depths", "stage_depths"):
        value = getattr(config, key, None)
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
            setattr(config, key, [min(1, v) for v in value])
            staged = True
    # a segmenter's neck reads given layers (BEiT's, DPT's out_indices): keep those
    taken = [i for key in ("out_indices", "backbone_out_indices")
             if isinstance(getattr(config, key, None), (list, tuple))
             for i in getattr(config, key) if isinstance(i, int)]
    for key in () if staged else ("num_hidden_layers", "num_layers", "encoder_layers"):
        # (a staged config's layer count is its stages': left as it is)
        if isinstance(getattr(config, key, None), int):
            setattr(config, key, min(max(2, max(taken, default=0) + 1), getattr(config, key)))
    for sub in ("vision_config", "backbone_config"):
        if getattr(config, sub, None) is not None:
            _shrunk(getattr(config, sub))
    return config


def _hf_builder(family, kind):
    def build():
        import transformers as T
        from transformers.models.auto import modeling_auto as auto
        config = T.AutoConfig.for_model(family)
        if kind == "segmentation" and hasattr(config, "out_indices") and \
                len(config.out_indices or ()) != 4:
            config.out_indices = [3, 5, 7, 11]  # BEiT's: its segmenter asks for base size
        config = _shrunk(config)
        config.num_labels = 5
        names = (auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES if kind == "classification"
                 else auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES)[family]
        name = names[0] if isinstance(names, (list, tuple)) else names  # DeiT has two heads
        if getattr(T, name).main_input_name == "input_ids":  # ImageGPT, ShieldGemma-2
            raise NotPixels("input_ids")
        model = getattr(T, name)(config)
        size = getattr(config, "image_size", None) or \
            getattr(getattr(config, "vision_config", None), "image_size", None) or 224
        size = size[-1] if isinstance(size, (list, tuple)) else size
        return model, _smaller_if_it_runs(model, int(size))
    return build


def _front_end(model) -> str:
    from relprop.graph import needs_example
    return "torch.export" if needs_example(model) else "torch.fx"


def _no_zero_layers(model):
    """Parameters initialised to zero (timm's and torchvision's ViT heads, zero biases, NFNet's
    skip-init gains, layer-scale factors) drawn again, as training leaves them, so that no score
    is 0 by construction, no layer's output is its bias alone, and every map has something to
    show."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                continue
            for p in module.parameters(recurse=False):
                if p.is_floating_point() and p.numel() and not p.detach().any():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.02)


class TimedOut(Exception):
    pass


class NotPixels(Exception):
    """A classifier whose input is not an image (ImageGPT's colour-cluster ids, ShieldGemma-2's
    prompt tokens): a language model's input, not this benchmark's."""


def measure(name, kind, build, limit_s: int = 300) -> dict:
    """One model's row, given at most ``limit_s`` seconds (a model that takes longer on this
    machine is recorded as timed out, not waited for)."""
    import signal

    def expire(*_):
        raise TimedOut(f"more than {limit_s} s on this machine")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(limit_s)
    try:
        return _measure(name, kind, build)
    except TimedOut as e:
        return {"model": name, "kind": kind, "status": "timed out", "reason": str(e)}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _measure(name, kind, build) -> dict:
    import relprop
    row = {"model": name, "kind": kind}
    try:
        model, size = build()
    except NotPixels as e:
        row.update(status="not pixels", reason=f"its input is {e}, not an image; not counted")
        return row
    except Exception as e:  # noqa: BLE001
        row.update(status="not built", reason=f"{type(e).__name__}: {str(e)[:200]}")
        return row
    row["built"] = getattr(model, "relprop_name", name.split(":")[-1])
    row["size"] = size
    row["parameters"] = sum(p.numel() for p in model.parameters())
    if row["parameters"] > MAX_PARAMETERS:
        row.update(status="too large", reason=f"{row['parameters'] / 1e6:.0f}M parameters: its "
                   "float64 check needs more memory than this machine spares beside other work")
        return row
    model.eval()
    _no_zero_layers(model)
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    try:
        start = time.perf_counter()
        relprop.explain(model, x, method="rap-stable")
        row["capture_s"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        relprop.explain(model, x, method="rap-stable")
        row["explain_s"] = round(time.perf_counter() - start, 3)
        row["front_end"] = _front_end(model)
        model64, x64 = model.double(), x.double()
        for method in ("rap", "rap-stable"):
            e = relprop.explain(model64, x64, method=method)
            error = (e.delta.abs() / e.score.abs().clamp(min=1)).max().item()
            row[f"{method}_error"] = error
            row["score"] = e.score.abs().max().item()
            row[f"{method}_mass"] = e.relevance.abs().sum().item()
        conserved = all(row[f"{m}_error"] <= TOLERANCE for m in ("rap", "rap-stable"))
        empty = row["score"] == 0 or row["rap-stable_mass"] == 0
        row["status"] = "empty map" if empty else "explained" if conserved else "not conserved"
        if not conserved and not empty:
            row["reason"] = "; ".join(_why_not_conserved(row, m) for m in ("rap", "rap-stable")
                                      if row[f"{m}_error"] > TOLERANCE)
    except Exception as e:  # noqa: BLE001  (what stops it, in words)
        row.update(status="unsupported", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
        if not isinstance(e, (ValueError, relprop.UnsupportedOperation, relprop.UntraceableModel,
                              relprop.NotApplicable)):
            row["trace"] = traceback.format_exc(limit=3)[-600:]
    return row


def _why_not_conserved(row, method) -> str:
    """Rounding where the error is float64's rounding of the map's own mass (|R| summed: large
    where positive and negative relevance cancel), a lost share otherwise."""
    lost = row[f"{method}_error"] * max(1.0, row["score"])
    mass = row[f"{method}_mass"]
    if lost <= 1e-13 * mass:
        return (f"{method}: rounding (Σ|R| is {mass / max(1.0, row['score']):.0e} times the "
                f"score; the error is {lost / mass:.0e} of it)")
    return f"{method}: {row[f'{method}_error']:.1e} of the score lost"


def table(rows) -> str:
    by_source: dict[str, list] = {}
    for row in rows:
        by_source.setdefault(row["model"].split(":")[0], []).append(row)
    lines = ["| source | built | explained (conserving to 1e-9 in float64) | by torch.fx | "
             "by torch.export |", "|---|---|---|---|---|"]
    for source, found in by_source.items():
        built = [r for r in found if r["status"] not in ("not built", "not pixels")]
        ok = [r for r in built if r["status"] == "explained"]
        fx = sum(r.get("front_end") == "torch.fx" for r in ok)
        lines.append(f"| {source} | {len(built)} | {len(ok)} ({100 * len(ok) / max(1, len(built)):.0f} %)"
                     f" | {fx} | {len(ok) - fx} |")
    lines += ["", "| model | status | front end | rap error | rap-stable error | capture s | "
              "explain s | reason |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def fmt(v):
            return f"{v:.1e}" if isinstance(v, float) else ""
        lines.append(f"| {r['model']} ({r.get('built', '')}) | {r['status']} | {r.get('front_end', '')} | "
                     f"{fmt(r.get('rap_error'))} | {fmt(r.get('rap-stable_error'))} | "
                     f"{r.get('capture_s', '')} | {r.get('explain_s', '')} | "
                     f"{r.get('reason', '').replace('|', '/')[:160]} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("torchvision", "timm", "hf"))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--names", default=None,
                        help="comma-separated: only these (timm module, HF family or "
                             "torchvision builder names), to rerun a few after a fix")
    parser.add_argument("--out", default=str(RESULTS / "coverage"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    sources = {"torchvision": torchvision_models, "timm": timm_models, "hf": hf_models}
    rows = []
    from tqdm import tqdm
    for source, listing in sources.items():
        if args.only and source != args.only:
            continue
        models = listing(args.limit)
        if args.names:
            wanted = set(args.names.split(","))
            models = [m for m in models if m[0].split(":", 1)[1] in wanted]
        for name, kind, build in tqdm(models, desc=source, unit="model"):
            row = measure(name, kind, build)
            rows.append(row)
            tqdm.write(f"{name}: {row['status']} {row.get('reason', '')[:120]}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
    out.with_suffix(".md").write_text(table(rows))
    print(table(rows).split("\n\n")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
