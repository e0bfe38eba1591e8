"""relprop: Relative Attributing Propagation (RAP) for unmodified PyTorch image classifiers."""
import importlib

from .api import (DEFAULT_METHOD, LRP, RAP, Explainer, Explanation, StableRAP, explain,
                  explainer)
from .errors import NotApplicable, UnsupportedOperation, UntraceableModel
from .explainer import Call
from .graph import trace
from .registry import MethodSpec, Option, get_method, methods, register_method
from .ops import register_op
from .rules import register_rule

__version__ = "0.1.0"
__all__ = ["NotApplicable", "RAP", "StableRAP", "LRP", "Explainer", "Call", "Explanation", "explain", "explainer",
           "UnsupportedOperation", "UntraceableModel", "register_op", "register_rule",
           "register_method", "get_method", "MethodSpec", "Option", "methods", "trace",
           "DEFAULT_METHOD"]

_LAZY = {"models", "plot", "targets"}  # torchvision's model zoo and matplotlib load only when used


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'relprop' has no attribute '{name}'")
