"""relprop: Relative Attributing Propagation (RAP) for unmodified PyTorch image classifiers."""
import importlib

from .api import LRP, RAP, Explanation, StableRAP, explain, methods
from .errors import UnsupportedOperation, UntraceableModel
from .graph import trace
from .ops import register_op
from .rules import register_rule

__version__ = "0.1.0"
__all__ = ["RAP", "StableRAP", "LRP", "Explanation", "explain", "UnsupportedOperation", "UntraceableModel",
           "register_op", "register_rule", "methods", "trace"]

_LAZY = {"models", "plot"}  # torchvision's model zoo and matplotlib load only when used


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'relprop' has no attribute '{name}'")
