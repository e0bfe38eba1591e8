"""``relprop models`` and ``relprop methods``: what relprop can explain, and with what."""
from __future__ import annotations

import textwrap

from .. import models
from ..api import DEFAULT_METHOD
from ..registry import specs


def add_parsers(sub) -> None:
    sub.add_parser("models", help="list the registered models").set_defaults(run=list_models)
    sub.add_parser("methods", help="list the methods, what each shows and its options"
                   ).set_defaults(run=list_methods)


def list_models(args) -> int:
    for name in models.names():
        spec = models.spec(name)
        kind = "" if spec.kind == "classification" else f" [{spec.kind}]"
        print(f"{name:30s} {spec.description}{kind}")
    print(f"{'timm:NAME':30s} a model of timm, its weights from the Hugging Face cache")
    print(f"{'hf:NAME_OR_PATH':30s} a Hugging Face image classifier or segmenter with its "
          "image processor, from the HF cache or a save_pretrained folder")
    return 0


def list_methods(args) -> int:
    for spec in specs():
        default = " (default)" if spec.name == DEFAULT_METHOD else ""
        layer = ", layer=" if spec.supports_layer else ""
        print(f"{spec.name}{default}  [{spec.family}{layer}]")
        print(textwrap.fill(spec.summary.replace("`", ""), 96, initial_indent="    ",
                            subsequent_indent="    "))
        for option in spec.options:
            print(textwrap.fill(f"{option.name}={option.default!r}: {option.doc}", 96,
                                initial_indent="    - ", subsequent_indent="      "))
    return 0
