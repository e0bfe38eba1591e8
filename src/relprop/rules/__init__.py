"""Relevance rules, one module per method family: :mod:`.registry` (how rules are registered and
found), :mod:`.common` (rules every propagation method shares), :mod:`.rap` (RAP and rap-stable),
:mod:`.lrp` (the LRP composites), :mod:`.attnlrp`
(AttnLRP as LXT computes it); :mod:`.algebra` holds the linear algebra they share."""
from .registry import (FULL, WITH_BFLOAT16, Factored, Rule, analyse, derive, get_rule,
                       register_analysis, register_rule, registered_methods)
from . import attnlrp, common, lrp, rap  # noqa: E402,F401  (register the built-in rules)

__all__ = ["FULL", "WITH_BFLOAT16", "Factored", "Rule", "analyse", "derive", "get_rule", "register_analysis",
           "register_rule", "registered_methods"]
