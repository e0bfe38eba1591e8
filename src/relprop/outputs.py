"""What relprop writes for people and programs to read back: strict JSON."""
from __future__ import annotations

import json
import math
from pathlib import Path


def strict_json(value):
    """``value`` ready for strict JSON (no NaN/Infinity, which JavaScript's JSON.parse and jq
    refuse): undefined figures become null, keys strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_json(path: Path, record) -> None:
    """``record`` as strict, indented JSON."""
    Path(path).write_text(json.dumps(strict_json(record), indent=2, allow_nan=False))
