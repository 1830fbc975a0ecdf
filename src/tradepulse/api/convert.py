"""Pure conversions from stored rows to response values."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any


def ns_to_iso(ns: int) -> str:
    """Unix nanoseconds → ISO-8601 UTC with microseconds and a ``Z`` suffix."""
    seconds, rem = divmod(int(ns), 1_000_000_000)
    dt = datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=rem // 1000)
    return dt.isoformat(timespec="microseconds").replace("+00:00", "Z")


def finite(value: Any) -> float | None:
    """A JSON-safe float: None for missing, NaN or ±inf (JSON has no NaN)."""
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def as_int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def json_object(value: Any) -> dict[str, float | None]:
    """A stored features value (JSON text or mapping) → {name: finite float or None}."""
    if isinstance(value, (str, bytes)):
        # stdlib json, not orjson: a stage that wrote with json.dumps may have left NaN in it.
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): finite(v) for k, v in value.items()}
