"""Errors that tell the user what relprop could not do and how to go on."""


class UnsupportedOperation(TypeError):
    """An op in the traced model has no relevance rule.

    Carries the graph node, the op and the module path so that the message can point at the
    exact line of the model, and says how to register a rule for it.
    """

    def __init__(self, op: str, node: str, module_path: str | None, method: str = "rap",
                 reason: str | None = None):
        self.op, self.node, self.module_path, self.method = op, node, module_path, method
        where = f" in module '{module_path}'" if module_path else ""
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"relprop cannot propagate '{method}' relevance through {op} at graph node "
            f"'{node}'{where}{why}. If relevance should pass through it unchanged, register it: "
            f"relprop.register_op({_short(op)}, kind='passthrough'); for a rule of your own, "
            f"register a new kind with relprop.register_op(..., kind='my_kind') and "
            f"relprop.register_rule('my_kind', my_rule, method='{method}')."
        )


class NotApplicable(ValueError):
    """A method that does not apply to this kind of model (attention rollout on a CNN, or on
    windowed attention): runs over every method leave it out, with a note."""


class NoDetection(ValueError):
    """A detector's target selects no detection of an image: a run over many images skips that
    image and goes on."""


class UntraceableModel(TypeError):
    """torch.fx could not trace the model (data-dependent control flow and the like)."""


class ForwardError(RuntimeError):
    """The model failed on the given inputs; carries the op where it did."""

    def __init__(self, op, error: Exception):
        self.op, self.error = op, error
        super().__init__(f"{op.source} at graph node '{op.name}': {error}")


class WeightsUnavailable(RuntimeError):
    """The weights of a registered model can be had neither from the cache nor the network, or a
    weights file does not hold weights for the model."""


def _short(op: str) -> str:
    """What to pass to register_op for an op described as 'module X', 'method Tensor.x' or
    'function mod.f': the class, the method's name, or the function."""
    kind, _, name = op.partition(" ")
    if kind == "method":
        return repr(name.rpartition(".")[2])
    return name
