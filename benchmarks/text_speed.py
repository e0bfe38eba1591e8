"""Time rap-stable, lrp-attn and attnlrp on language models against the plain gradient and against
LXT (AttnLRP's own library), in one process and one run.

    python benchmarks/text_speed.py                        # GPT-2 small and a Llama, 128 and 512
    python benchmarks/text_speed.py --models gpt2 --lengths 128

Random weights (timing does not depend on them), batch 1, float32:
- ``gpt2``: GPT-2 small's shape (12 layers, width 768, 12 heads, 50257 tokens, 124 M);
- ``llama``: a Llama of the same width and depth (12 layers, width 768, 12 heads, SiLU-gated MLP
  of 2048, RMSNorm, rotary positions, 32000 tokens).

LXT 2.1 imports only under transformers 4.x, so the whole run uses the packages of ``.lxt-env``
(``.ci/run``'s second set: transformers 4.57), put first on the path; relprop runs on them too.
relprop's methods, the forward pass and the gradient are interleaved repeat by repeat; LXT patches
the family's transformers classes for the whole process (``lxt.efficient.monkey_patch`` with its
default map for language models, ``attnLRP``), so it is timed after them on a fresh model of the
same weights, with the gradient timed again beside it to show how much the machine drifted.
Times are medians in ms per sequence; memory is the peak RSS above what the process held.
Writes benchmarks/results/text-speed-cpu.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / ".lxt-env").is_dir():  # before anything imports transformers
    sys.path.insert(0, str(ROOT / ".lxt-env"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
import transformers  # noqa: E402

import relprop  # noqa: E402
from bench import machine, peak_rss, timed  # noqa: E402
from relprop.explainer import exact_float32  # noqa: E402

METHODS = ("rap-stable", "lrp-attn", "attnlrp")


def build(name: str):
    torch.manual_seed(0)
    if name == "gpt2":
        config = transformers.GPT2Config()  # GPT-2 small
        return transformers.GPT2LMHeadModel(config).eval()
    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048,
                                      num_hidden_layers=12, num_attention_heads=12,
                                      num_key_value_heads=12, max_position_embeddings=1024)
    return transformers.LlamaForCausalLM(config).eval()


def _frozen(model):
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def gradient_of(model, x, target):
    def gradient():
        xi = x.clone().requires_grad_()
        logits = model(inputs_embeds=xi).logits[:, -1]
        torch.autograd.grad(logits.gather(1, target.view(-1, 1)).sum(), xi)
    return gradient


def bench(name, length, warmup, repeats):
    model = _frozen(build(name))
    ids = torch.randint(100, 1000, (1, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = model.get_input_embeddings()(ids)
        target = model(input_ids=ids).logits[:, -1].argmax(-1)
    explainers = {m: relprop.explainer(model, m) for m in METHODS}

    def forward():
        with torch.no_grad():
            model(inputs_embeds=x)

    fns = {"forward": forward, "gradient": gradient_of(model, x, target)}
    fns.update({m: (lambda e=e: e.explain(ids, target)) for m, e in explainers.items()})
    with exact_float32():
        times = timed(fns, torch.device("cpu"), warmup, repeats)
        peaks = {label: peak_rss(fn) for label, fn in fns.items()}
    state = copy.deepcopy(model.state_dict())
    return times, peaks, state, x, target


def bench_lxt(name, state, x, target, warmup, repeats):
    """LXT after its global patch of the family, on a fresh model with the same weights."""
    from lxt.efficient import monkey_patch
    patches = importlib.import_module(f"lxt.efficient.models.{name}")
    modeling = importlib.import_module(f"transformers.models.{name}.modeling_{name}")
    monkey_patch(modeling, patches.attnLRP)
    model = build(name)
    model.load_state_dict(state)
    model = _frozen(model)

    def lxt():
        xi = x.clone().requires_grad_()
        logits = model(inputs_embeds=xi).logits[:, -1]
        logits.gather(1, target.view(-1, 1)).sum().backward()
        return xi * xi.grad

    fns = {"lxt": lxt, "gradient (LXT-patched model)": gradient_of(model, x, target)}
    with exact_float32():
        times = timed(fns, torch.device("cpu"), warmup, repeats)
        peaks = {label: peak_rss(fn) for label, fn in fns.items()}
    return times, peaks


def table(rows, title) -> str:
    labels = ["forward", "gradient", *METHODS, "lxt"]
    lines = [f"### {title}", "",
             "| model | tokens | " + " | ".join(f"{m} ms" for m in labels)
             + " | rap-stable ÷ gradient | lrp-attn ÷ LXT | attnlrp ÷ LXT | peak MiB: "
               "gradient / rap-stable / attnlrp / LXT |",
             "|---" * (len(labels) + 6) + "|"]
    for r in rows:
        t, p = r["ms"], r["peak_mib"]
        lines.append(f"| {r['model']} | {r['tokens']} | "
                     + " | ".join(f"{t[m]:.0f}" for m in labels)
                     + f" | {t['rap-stable'] / t['gradient']:.2f} | "
                     f"{t['lrp-attn'] / t['lxt']:.2f} | {t['attnlrp'] / t['lxt']:.2f} | "
                     + " / ".join(f"{p[m]:.0f}" for m in ("gradient", "rap-stable", "attnlrp",
                                                          "lxt")) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gpt2", "llama"],
                        choices=["gpt2", "llama"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)
    measured = [(name, length, *bench(name, length, args.warmup, args.repeats))
                for name in args.models for length in args.lengths]
    rows = []
    for name, length, times, peaks, state, x, target in measured:  # LXT last: it patches
        lxt_times, lxt_peaks = bench_lxt(name, state, x, target, args.warmup, args.repeats)
        times, peaks = {**times, **lxt_times}, {**peaks, **lxt_peaks}
        rows.append({"model": name, "tokens": length,
                     "ms": {k: 1000 * v for k, v in times.items()},
                     "peak_mib": {k: (v or 0) / 2 ** 20 for k, v in peaks.items()}})
        print(rows[-1], flush=True)
    title = (f"language models, batch 1, {machine(torch.device('cpu'))}, float32, transformers "
             f"{transformers.__version__}")
    out = ROOT / "benchmarks" / "results" / "text-speed-cpu"
    out.with_suffix(".json").write_text(json.dumps({"machine": machine(torch.device("cpu")),
                                                    "rows": rows}, indent=2))
    out.with_suffix(".md").write_text(table(rows, title))
    print(table(rows, title))


if __name__ == "__main__":
    main()
