"""Language models (rap-spec §9.5): a Hugging Face causal LM or sequence classifier explained at
its input embeddings, with no code of its family.

Token ids are integers, which carry no relevance; what the network computes from is their
embeddings. So the model is explained as the function ``inputs_embeds (N, T, D) -> logits`` of
the given ids' embeddings, the attention mask a constant of the call: for a causal LM the
next-token logits at each sequence's last real position (N, V), for a classifier its logits
(N, C). That function goes through the same capture, rules and Captum calls as any model, so
every method explains it and Σ R = the logit for RAP. The relevance is per embedding entry
(N, T, D) and ``heatmap`` per token (N, T); padding positions get none.

A :class:`TextExplanation` shows itself: coloured tokens (red for, blue against) in Jupyter
(``_repr_html_``), in a file (``save("x.html")``, ``save("x.json")``) and in a terminal
(:meth:`TextExplanation.terminal`).
"""
from __future__ import annotations

import html
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .explanation import Explanation

# The methods offered for text (compare's default, serve's list): the propagation methods and
# the gradient family that needs no image (Grad-CAM, guided backprop, DeepLift and rollout read
# an image network's modules or attention maps of patches)
METHODS = ("rap-stable", "rap", "attnlrp", "lrp-attn", "lrp-epsilon-plus", "gradient",
           "gradient-x-input", "integrated-gradients")
SENSITIVITIES = ("gradient", "smoothgrad")  # derivatives: a token's map is their norm
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_CLASSIFIER_SUFFIXES = ("ForSequenceClassification",)


def text_kind(model: nn.Module) -> str | None:
    """"causal" or "classifier" for a Hugging Face language model relprop explains by its
    token ids; None for any other model."""
    name = type(model).__name__
    if not hasattr(model, "get_input_embeddings") or not hasattr(model, "config"):
        return None
    if name.endswith(_CAUSAL_SUFFIXES):
        return "causal"
    if name.endswith(_CLASSIFIER_SUFFIXES):
        return "classifier"
    return None


def is_text_model(model: nn.Module) -> bool:
    return text_kind(model) is not None


def mask_key(mask: torch.Tensor) -> tuple:
    """An attention mask as a dict key: its shape, device and values."""
    return tuple(mask.shape), str(mask.device), mask.cpu().numpy().tobytes()


class OnEmbeddings(nn.Module):
    """The language model as a function of its input embeddings, for one attention mask: a
    causal LM's next-token logits at each sequence's last real position, (N, V); a
    classifier's logits, (N, C). The model is shared, not copied or changed."""

    def __init__(self, model: nn.Module, attention_mask: torch.Tensor, every_position=False):
        super().__init__()
        self.model = model
        self.kind = text_kind(model)
        self.every_position = every_position  # a causal LM's logits at all positions (N, T, V)
        self.attention_mask = attention_mask  # a constant of this function, not a buffer
        # the last position whose mask is 1, per sequence (left or right padding alike)
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        self.last = (attention_mask.bool() * (positions + 1)).argmax(1)
        # a causal LM's positions count the text only, as generate() counts them: a
        # left-padded sequence is explained as the same sequence unpadded
        self.extra = {}
        if self.kind == "causal" and "position_ids" in inspect.signature(model.forward).parameters:
            self.extra["position_ids"] = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
        self.training = model.training  # the flag only: the model's own modules keep theirs

    def trace_key(self) -> tuple:
        """What this function's graph depends on besides the model (:func:`relprop.graph.traced`
        keeps one capture per model and key, shared by every wrapper): the mask, whether every
        position's logits are given."""
        return self.model, (mask_key(self.attention_mask), self.every_position)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        logits = self.model(inputs_embeds=embeddings, attention_mask=self.attention_mask,
                            **self.extra).logits
        if self.kind == "causal" and not self.every_position:
            return logits[torch.arange(logits.shape[0], device=logits.device), self.last]
        return logits


@dataclass
class TextExplanation(Explanation):
    """The relevance of each input embedding entry, (N, T, D), for one token or class per
    sequence; ``heatmap`` is per token, (N, T). ``tokens`` are the tokens' strings (from the
    tokenizer, else ``#id``), ``attention_mask`` which positions are text (1) or padding (0)."""

    input_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    tokens: list = field(default_factory=list)  # per sequence, a list of strings
    target_names: list = field(default_factory=list)  # per sequence, the target's string

    @property
    def heatmap(self) -> torch.Tensor:
        """(N, T): each token's relevance, its embedding's summed; for a sensitivity (the
        gradient, SmoothGrad), which is no share of the score, the gradient's L2 norm over the
        embedding, as inseq shows saliency: a signed sum is rounding noise where the network
        begins with a LayerNorm (its gradient sums to zero over the features)."""
        if self.method in SENSITIVITIES:
            return self.relevance.norm(dim=-1)
        return self.relevance.sum(-1)

    # Showing it -------------------------------------------------------------------------

    def html(self, max_sequences: int = 8) -> str:
        """Coloured tokens, one paragraph per sequence: red for, blue against, the colour's
        strength the token's share of the sequence's largest |relevance|."""
        parts = ['<div style="font-family:monospace;line-height:1.9">']
        for i in range(min(len(self.tokens), max_sequences)):
            heat, keep = self._row(i)
            scale = max(max((abs(v) for v in heat), default=0.0), 1e-30)
            title = html.escape(f"{self.method}: {self.target_names[i]} "
                                f"(score {float(self.score[i]):.4g})")
            spans = []
            for token, value, real in zip(self.tokens[i], heat, keep):
                if not real:
                    continue
                alpha = min(abs(value) / scale, 1.0)
                colour = (220, 40, 40) if value >= 0 else (40, 90, 220)
                spans.append(f'<span title="{value:.4g}" style="background:rgba({colour[0]},'
                             f'{colour[1]},{colour[2]},{alpha:.3f});padding:1px 2px;'
                             f'border-radius:3px">{html.escape(shown(token))}</span>')
            parts.append(f"<p><b>{title}</b><br>{''.join(spans)}</p>")
        parts.append("</div>")
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        return self.html()

    def _repr_png_(self):
        return None  # text shows itself as HTML

    def terminal(self, max_sequences: int = 8) -> str:
        """The coloured tokens for a terminal (24-bit ANSI colours)."""
        lines = []
        for i in range(min(len(self.tokens), max_sequences)):
            heat, keep = self._row(i)
            scale = max(max((abs(v) for v in heat), default=0.0), 1e-30)
            words = []
            for token, value, real in zip(self.tokens[i], heat, keep):
                if not real:
                    continue
                t = min(abs(value) / scale, 1.0)
                fade = int(255 * (1 - t))
                rgb = (255, fade, fade) if value >= 0 else (fade, fade, 255)
                words.append(f"\x1b[48;2;{rgb[0]};{rgb[1]};{rgb[2]}m\x1b[38;2;0;0;0m"
                             f"{shown(token)}\x1b[0m")
            lines.append(f"{self.method}: {self.target_names[i]} (score "
                         f"{float(self.score[i]):.4g})\n" + "".join(words))
        return "\n\n".join(lines)

    def records(self) -> list[dict]:
        """Per sequence: its tokens, ids and relevance, the target and the score (JSON-ready)."""
        found = []
        for i in range(len(self.tokens)):
            heat, keep = self._row(i)
            found.append({"method": self.method, "target": int(self.target[i]),
                          "target_token": self.target_names[i], "score": float(self.score[i]),
                          "delta": float(self.delta[i]),
                          "tokens": [{"token": t, "id": int(self.input_ids[i, j]),
                                      "relevance": heat[j], "padding": not keep[j]}
                                     for j, t in enumerate(self.tokens[i])]})
        return found

    def save(self, path, max_sequences: int = 8) -> None:
        """``.html``: the coloured tokens; ``.json``: :meth:`records`; ``.png``, ``.pdf``,
        ``.svg``: :meth:`figure`."""
        path = Path(path)
        if path.suffix == ".html":
            path.write_text("<!doctype html><meta charset='utf-8'>\n" + self.html(max_sequences),
                            encoding="utf-8")
        elif path.suffix == ".json":
            path.write_text(json.dumps(self.records(), indent=1), encoding="utf-8")
        elif path.suffix in (".png", ".pdf", ".svg"):
            self.figure(None, max_sequences).savefig(path, dpi=130)
        else:
            raise ValueError(f"a text explanation is saved as .html, .json, .png, .pdf or "
                             f".svg, not '{path.suffix or path.name}'")

    def figure(self, images=None, max_images: int = 8):
        """A matplotlib Figure of the coloured tokens, one block per sequence (the first
        ``max_images``), wrapped at 64 characters, as :meth:`html` colours them."""
        from matplotlib.figure import Figure
        from matplotlib.patches import FancyBboxPatch
        width, line_height = 64, 1.0
        blocks = []
        for i in range(min(len(self.tokens), max_images)):
            heat, keep = self._row(i)
            scale = max(max((abs(v) for v in heat), default=0.0), 1e-30)
            lines, line, used = [], [], 0
            for token, value, real in zip(self.tokens[i], heat, keep):
                if not real:
                    continue
                word = shown(token).strip() or "␣"
                if used + len(word) > width and line:
                    lines.append(line)
                    line, used = [], 0
                line.append((word, value / scale))
                used += len(word) + 1
            lines.append(line)
            blocks.append((f"{self.method}: {self.target_names[i]} "
                           f"(score {float(self.score[i]):.4g})", lines))
        rows = sum(1 + len(lines) for _, lines in blocks) + 0.5 * len(blocks)
        figure = Figure(figsize=(0.13 * width + 0.4, 0.32 * rows + 0.2))
        axes = figure.add_axes((0, 0, 1, 1))
        axes.set_xlim(-0.5, width + 0.5)
        axes.set_ylim(rows * line_height, 0)
        axes.axis("off")
        y = 0.7
        for title, lines in blocks:
            axes.text(0, y, title, fontsize=9, fontweight="bold", va="center")
            y += line_height
            for line in lines:
                x = 0.0
                for word, share in line:
                    colour = (0.86, 0.16, 0.16) if share >= 0 else (0.16, 0.35, 0.86)
                    axes.add_patch(FancyBboxPatch((x - 0.1, y - 0.38), len(word) + 0.2, 0.76,
                                                  boxstyle="round,pad=0.02", linewidth=0,
                                                  facecolor=(*colour, min(abs(share), 1.0))))
                    axes.text(x, y, word, fontsize=9, family="monospace", va="center")
                    x += len(word) + 1
                y += line_height
            y += 0.5 * line_height
        return figure

    def show(self, images=None, max_images: int = 8) -> None:
        try:
            from IPython import get_ipython
            from IPython.display import HTML, display
            if get_ipython() is not None and "Terminal" not in type(get_ipython()).__name__:
                display(HTML(self.html(max_images)))
                return
        except ImportError:
            pass
        print(self.terminal(max_images))

    def _row(self, i: int) -> tuple[list[float], list[bool]]:
        heat = self.heatmap[i].double().tolist()
        keep = [True] * len(heat) if self.attention_mask is None else \
            [bool(v) for v in self.attention_mask[i].tolist()]
        return heat, keep


def shown(token: str) -> str:
    """A token as a reader sees it: the byte-level BPE's space mark and SentencePiece's as a
    space."""
    return token.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\\n")


def _token_strings(tokenizer, ids: torch.Tensor) -> list[list[str]]:
    if tokenizer is None:
        return [[f"#{int(t)}" for t in row] for row in ids]
    return [[token if token is not None else f"#{int(t)}"  # an id past the tokenizer's vocab
             for t, token in zip(row, tokenizer.convert_ids_to_tokens([int(t) for t in row]))]
            for row in ids]


def token_target(target, tokenizer):
    """A target as the text explainer takes it: a token string becomes its id (it must be one
    token of the tokenizer), a list of them a list of ids; anything else as it is."""
    if isinstance(target, str):
        return _token_id(target, tokenizer)
    if isinstance(target, (list, tuple)) and target and all(isinstance(t, str) for t in target):
        return [_token_id(t, tokenizer) for t in target]
    return target


def _token_id(text: str, tokenizer) -> int:
    if tokenizer is None:
        raise ValueError(f"target='{text}' is a token string: pass tokenizer= so that relprop "
                         "can look it up, or give the token id")
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(f"target '{text}' is {len(ids)} tokens for this tokenizer ({pieces}); "
                         "give one token (with its leading space where the tokenizer marks one, "
                         "e.g. ' Paris'), or its id")
    return ids[0]


class TextExplainer:
    """Explains a Hugging Face language model with one method: ``explain(input_ids, target,
    attention_mask=None)``. The captured function is kept per attention mask, so that calls
    with the same mask (no padding) capture the model once."""

    def __init__(self, model: nn.Module, method: str, tokenizer=None, **options):
        from .registry import get_method
        self.model, self.method, self.tokenizer, self.options = model, method, tokenizer, options
        self.spec = get_method(method)
        self._explainers: dict = {}

    def check(self, dtype: torch.dtype | None = None, layer: str | None = None) -> None:
        if layer is not None:
            raise ValueError("layer= is not supported for language models yet: relprop explains "
                             "a text at its input embeddings")

    def exclusive(self, layer: str | None = None) -> bool:
        return False

    def explain(self, input_ids: torch.Tensor, target=None, layer=None, attention_mask=None,
                tokenizer=None, embeddings: torch.Tensor | None = None,
                **options) -> TextExplanation:
        """``input_ids`` (N, T) token ids; ``target``: None (a causal LM's predicted next token,
        a classifier's predicted class), a token id or class index (one, or one per sequence),
        a token string (with ``tokenizer=``), or a callable on the logits; ``attention_mask``
        (N, T), 1 for text and 0 for padding (default: all text); ``tokenizer`` for this call;
        ``embeddings`` (N, T, D) explained in place of the ids' own (a perturbed copy: the ids
        then only name the tokens)."""
        self.check(None, layer)
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        ids = self._ids(input_ids)
        mask = torch.ones_like(ids) if attention_mask is None else \
            torch.as_tensor(attention_mask, device=ids.device)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, input_ids "
                             f"{tuple(ids.shape)}: give one of the same shape")
        if not bool((mask.sum(1) > 0).all()):
            raise ValueError("a sequence's attention_mask is all zeros: it has no text to "
                             "explain")
        if embeddings is None:
            with torch.no_grad():
                x = self.model.get_input_embeddings()(ids).detach()
        elif embeddings.dim() != 3 or embeddings.shape[:2] != ids.shape or \
                not embeddings.is_floating_point():
            raise ValueError(f"embeddings are {embeddings.dtype} of shape "
                             f"{tuple(embeddings.shape)}; input_ids {tuple(ids.shape)}: give "
                             "floating-point (N, T, D) for the same N and T")
        else:
            x = embeddings
        inner = self._explainer(mask)
        target = self._class_target(target) if self.kind == "classifier" else \
            token_target(target, tokenizer)
        e = inner.explain(x, target, **options)
        if self.kind == "classifier" and not bool(mask.all()) and embeddings is None:
            self._check_padding(ids, mask, e.logits)
        relevance = e.relevance * mask[..., None].to(e.relevance.dtype)  # padding: none
        kept = {k: getattr(e, k) for k in ("target", "score", "logits", "method", "inputs")}
        return TextExplanation(relevance, **kept, input_ids=ids.detach(),
                               attention_mask=mask.detach(),
                               tokens=_token_strings(tokenizer, ids),
                               target_names=[self._target_name(int(t), tokenizer)
                                             for t in e.target])

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 8, tokenizer=None,
                 **options) -> TextExplanation:
        """Continue one prompt ``input_ids`` (1, T) greedily by ``max_new_tokens`` tokens and
        explain each generated token by the text before it (as inseq does): row ``k`` is the
        ``k``-th new token, its relevance over the prompt and the tokens generated before it
        (later positions are padding of that row). The whole continuation is run forward once
        and swept back once per token (:meth:`relprop.explainer.Explainer.explain_each`)."""
        if self.kind != "causal":
            raise ValueError("generate() explains a causal language model's continuation; this "
                             "model is a sequence classifier")
        ids = self._ids(input_ids)
        if ids.shape[0] != 1:
            raise ValueError(f"generate() continues one prompt, (1, T); got {ids.shape[0]}: "
                             "call it per prompt")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or \
                max_new_tokens < 1:
            raise ValueError(f"max_new_tokens is a positive number, got {max_new_tokens!r}")
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        sequence = ids
        with torch.no_grad():
            for _ in range(max_new_tokens):  # greedy: the model's own most probable token
                logits = self.model(input_ids=sequence).logits[:, -1]
                sequence = torch.cat([sequence, logits.argmax(-1)[:, None]], 1)
        vocabulary = logits.shape[-1]
        prompt, total = ids.shape[1], sequence.shape[1]
        read = sequence[:, :-1]  # the last new token is read by no prediction
        mask = torch.ones_like(read)
        with torch.no_grad():
            x = self.model.get_input_embeddings()(read).detach()
        module = OnEmbeddings(self.model, mask, every_position=True)
        inner = self.spec.build(module, method=self.method, **self.options)
        targets = []
        for k in range(max_new_tokens):
            w = torch.zeros(1, total - 1, vocabulary, dtype=x.dtype, device=x.device)
            w[0, prompt - 1 + k, sequence[0, prompt + k]] = 1
            targets.append(w)
        rows = inner.explain_each(x, targets, **options)
        masks = torch.stack([(torch.arange(total - 1) <= prompt - 1 + k).long()
                             for k in range(max_new_tokens)]).to(ids.device)
        relevance = torch.cat([r.relevance for r in rows]) * masks[..., None].to(x.dtype)
        new = sequence[0, prompt:]
        return TextExplanation(relevance, new.clone(), torch.cat([r.score for r in rows]),
                               torch.cat([r.logits[:, prompt - 1 + k] for k, r in
                                          enumerate(rows)]), self.method,
                               x.expand(max_new_tokens, -1, -1), input_ids=read.expand(
                                   max_new_tokens, -1).clone(), attention_mask=masks,
                               tokens=[list(row) for row in _token_strings(tokenizer, read)
                                       for _ in range(max_new_tokens)],
                               target_names=[self._target_name(int(t), tokenizer)
                                             for t in new])

    @property
    def kind(self) -> str:
        return text_kind(self.model)

    def _target_name(self, index: int, tokenizer) -> str:
        """The explained token's string or class's name; a target that is no one token or
        class (weights, a callable) is "custom"."""
        if index < 0:
            return "custom"
        if self.kind == "causal":
            return _token_strings(tokenizer, torch.tensor([[index]]))[0][0]
        labels = getattr(self.model.config, "id2label", None) or {}
        return str(labels.get(index, index))

    def _class_target(self, target):
        """A classifier's target: a class name (its config's ``id2label``) becomes its index."""
        names = [target] if isinstance(target, str) else target
        if not (isinstance(names, (list, tuple)) and names and
                all(isinstance(n, str) for n in names)):
            return target
        labels = {str(v): int(k) for k, v in (getattr(self.model.config, "id2label", None)
                                               or {}).items()}
        missing = [n for n in names if n not in labels]
        if missing:
            raise ValueError(f"'{missing[0]}' is no class of this classifier; its classes: "
                             f"{', '.join(labels)}")
        found = [labels[n] for n in names]
        return found[0] if isinstance(target, str) else found

    def _check_padding(self, ids, mask, logits) -> None:
        """A padded batch must give the model's own logits: a decoder's classifier (GPT-2's,
        Llama's) reads the last token it finds in ``input_ids``, which it cannot do from
        embeddings, and then reads the last position, padding included."""
        with torch.no_grad():
            own = self.model(input_ids=ids, attention_mask=mask).logits
        if own.shape != logits.shape or not torch.allclose(
                own.to(logits.dtype), logits, rtol=1e-4, atol=1e-5 * float(logits.abs().max())):
            raise ValueError(f"{type(self.model).__name__} reads the class from a position of "
                             "input_ids that its embeddings do not give relprop: with this "
                             "padding its logits would not be the model's. Pad on the left "
                             "(tokenizer.padding_side = 'left'), or explain one sequence at a "
                             "time")

    def _ids(self, input_ids) -> torch.Tensor:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype.is_floating_point or \
                input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else None
            raise ValueError(f"a language model is explained from input_ids, an integer tensor "
                             f"(N, T) (a tokenizer's return_tensors='pt'), got "
                             f"{type(input_ids).__name__} of shape {shape}")
        size = self.model.get_input_embeddings().num_embeddings
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= size):
            raise ValueError(f"input_ids hold ids outside the model's {size} embeddings "
                             f"({int(input_ids.min())} to {int(input_ids.max())}): a tokenizer "
                             "with tokens the model was not resized for "
                             "(model.resize_token_embeddings)")
        return input_ids

    def _explainer(self, mask: torch.Tensor):
        key = mask_key(mask)
        if key not in self._explainers:
            if len(self._explainers) >= 8:  # a few masks kept: a loop over padded batches
                self._explainers.pop(next(iter(self._explainers)))
            module = OnEmbeddings(self.model, mask)
            self._explainers[key] = self.spec.build(module, method=self.method, **self.options)
        return self._explainers[key]


class _NotExplained(Exception):
    """A checkpoint that loads but is no model relprop explains from text."""


def load(name: str):
    """``(model, tokenizer)`` of the Hugging Face language model ``name`` (a hub name in the HF
    cache, or a folder ``save_pretrained`` wrote), offline: a causal LM where its config names
    one, else a sequence classifier. A ValueError in one line where it cannot be read."""
    try:
        import transformers
    except ImportError:
        raise ValueError("language models need transformers: pip install transformers") from None
    try:
        config = transformers.AutoConfig.from_pretrained(name, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(name, local_files_only=True)
        architectures = config.architectures or []
        causal = any(a.endswith(_CAUSAL_SUFFIXES) for a in architectures)
        if not causal and not any(a.endswith(_CLASSIFIER_SUFFIXES) for a in architectures):
            kind = ", ".join(architectures) or "model of no named architecture"
            raise _NotExplained(f"'{name}' is a {kind}; relprop explains causal language "
                                "models and sequence classifiers from text (a head the "
                                "checkpoint lacks would be random)")
        auto = transformers.AutoModelForCausalLM if causal else \
            transformers.AutoModelForSequenceClassification
        model = auto.from_pretrained(name, local_files_only=True).eval()
    except _NotExplained as e:
        raise ValueError(str(e)) from None
    except Exception as e:  # OSError, ValueError, HF's own: all mean it cannot be read here
        detail = " ".join(str(e).split())[:160]
        raise ValueError(f"the Hugging Face language model '{name}' (its config, tokenizer and "
                         "weights) is neither a folder nor in the HF cache (relprop reads it "
                         "offline); download it once on a machine with network access "
                         f"(huggingface-cli download {name}), or pass the folder "
                         f"save_pretrained wrote ({type(e).__name__}: {detail})") from None
    if not is_text_model(model):
        raise ValueError(f"'{name}' is a {type(model).__name__}; relprop explains causal "
                         "language models and sequence classifiers from text")
    return model, tokenizer


def is_text_checkpoint(name: str) -> bool:
    """Whether the Hugging Face checkpoint ``name`` (offline: a folder or the HF cache) is a
    causal LM or sequence classifier by its config; False where there is none to read."""
    try:
        import transformers
        config = transformers.AutoConfig.from_pretrained(name, local_files_only=True)
    except Exception:
        return False
    return any(a.endswith(_CAUSAL_SUFFIXES + _CLASSIFIER_SUFFIXES)
               for a in config.architectures or [])


__all__ = ["TextExplainer", "TextExplanation", "OnEmbeddings", "is_text_model", "text_kind",
           "token_target", "load", "is_text_checkpoint", "shown", "METHODS"]
