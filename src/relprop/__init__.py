"""relprop: Relative Attributing Propagation (RAP) for unmodified PyTorch image classifiers."""
from .api import RAP, Explanation, explain
from .errors import UnsupportedOperation, UntraceableModel
from .graph import register_op, trace
from .rules import methods, register_rule

__version__ = "0.1.0"
__all__ = ["RAP", "Explanation", "explain", "UnsupportedOperation", "UntraceableModel",
           "register_op", "register_rule", "methods", "trace"]
