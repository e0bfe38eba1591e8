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
        print(f"{name:20s} {models.spec(name).description}")
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
