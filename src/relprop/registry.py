"""The one registry of explanation methods: what ``relprop.explain(..., method=...)``,
``relprop explain/compare/evaluate``, ``relprop serve`` and the README's method table offer.

A method is a :class:`MethodSpec`: its name, its family, what it shows (``summary``), its keyword
options with their defaults and meaning, whether ``layer=`` applies, and how to build its
explainer for a model. Adding a method is one :func:`register_method` call; nothing else in
relprop lists methods. Like torchvision's ``register_model``, a name is registered once.

This module knows no method family: the built-in methods register themselves from
:mod:`relprop.propagation` and :mod:`relprop.gradients`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Option:
    """One keyword option of a method."""

    name: str
    default: Any
    doc: str


@dataclass(frozen=True)
class MethodSpec:
    """Everything relprop knows of one method.

    ``build(model, method=name, **options)`` returns the method's explainer (a
    :class:`relprop.Explainer`) for ``model``. ``supports_layer``: ``layer=`` gives the relevance
    of a layer's output (for Grad-CAM: the layer the CAM is computed at).
    """

    name: str
    build: Callable
    family: str
    summary: str
    options: tuple[Option, ...] = ()
    supports_layer: bool = False

    def defaults(self) -> dict:
        return {o.name: o.default for o in self.options}

    def resolve_options(self, given: dict) -> dict:
        """The defaults updated by ``given``; an option the method does not take is refused,
        since a method that ignored it would explain something the caller did not ask for."""
        unknown = sorted(set(given) - {o.name for o in self.options})
        if unknown:
            known = ", ".join(f"{o.name}={o.default!r}" for o in self.options) or "none"
            raise ValueError(f"'{self.name}' takes no option {', '.join(unknown)}; its options: "
                             f"{known}")
        return {**self.defaults(), **given}


_METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, build: Callable, *, family: str, summary: str,
                    options: dict | tuple = (), supports_layer: bool = False) -> MethodSpec:
    """Register a method under ``name``: ``build(model, method=name, **options)`` makes its
    explainer; ``options`` maps each keyword option to ``(default, what it does)`` (or is a
    tuple of :class:`Option`). A name already registered is refused."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a method's name is a non-empty string, got {name!r}")
    if name in _METHODS:
        raise ValueError(f"a method named '{name}' is already registered "
                         f"({_METHODS[name].family}); choose another name")
    if isinstance(options, dict):
        options = tuple(Option(k, default, doc) for k, (default, doc) in options.items())
    spec = MethodSpec(name, build, family, summary, tuple(options), supports_layer)
    _METHODS[name] = spec
    return spec


def unregister_method(name: str) -> None:
    """Remove a method (tests, and a user replacing a method of their own)."""
    _METHODS.pop(name, None)


def get_method(name: str) -> MethodSpec:
    """The spec of ``name``; a ValueError that lists the methods where there is none."""
    spec = _METHODS.get(name)
    if spec is None:
        raise ValueError(f"unknown method '{name}'; available: {', '.join(_METHODS)}")
    return spec


def methods(family: str | None = None) -> list[str]:
    """Every registered method (of ``family`` where given), in registration order."""
    return [n for n, s in _METHODS.items() if family is None or s.family == family]


def specs() -> list[MethodSpec]:
    return list(_METHODS.values())


def markdown_table(default: str) -> str:
    """The README's method table, written from the registry: name, summary and options."""
    lines = ["| method | what it shows, and when to use it |", "|---|---|"]
    for spec in _METHODS.values():
        name = f"`{spec.name}`" + (" (default)" if spec.name == default else "")
        options = "; ".join(f"`{o.name}` ({o.default!r}): {o.doc}" for o in spec.options)
        layer = " `layer=` applies." if spec.supports_layer else ""
        lines.append(f"| {name} | {spec.summary} Options: {options or 'none'}.{layer} |")
    return "\n".join(lines)


__all__ = ["Option", "MethodSpec", "register_method", "unregister_method", "get_method",
           "methods", "specs", "markdown_table"]
