"""Parameter values as the start op's Config fields take them, from any source (typed CLI
options, `--run-param` text, `METAFLOW_RUN_*` variables, event payloads)."""

from __future__ import annotations

import json
from typing import Any

_TRUE = ("true", "1", "yes", "y", "t")
_FALSE = ("false", "0", "no", "n", "f")


def config_value(typ: str, value: Any) -> Any:
    """`value` converted for a Config field of Metaflow parameter type `typ` (JSON as text).
    Raises ValueError/TypeError when it is not a valid value of that type."""
    if value is None:
        return None
    if typ == "json":
        if isinstance(value, str):
            json.loads(value)
            return value
        return json.dumps(value)
    if typ == "bool":
        if isinstance(value, str):
            low = value.strip().lower()
            if low not in _TRUE + _FALSE:
                raise ValueError(value)
            return low in _TRUE
        return bool(value)
    if typ == "int":
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return int(value)
    if typ == "float":
        return float(value)
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)
