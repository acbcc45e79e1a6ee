"""JSON replies of format-bound steps: parsed as is, else repaired with json-repair (a truncated or
slightly malformed reply), else a counted rejection. Kept rows say whether they needed the repair."""

from __future__ import annotations

import json
from typing import Any

import json_repair

from raysynth.steps import Rejection


def parse_json_reply(text: str, required: tuple[str, ...]) -> tuple[dict[str, Any], bool]:
    """(the reply's JSON object, whether it had to be repaired); `required` keys must be present and
    non-empty, else `Rejection("unusable_json")`."""
    repaired = False
    try:
        value = json.loads(text)
    except ValueError:
        value, repaired = json_repair.repair_json(text, return_objects=True), True
    if not isinstance(value, dict):
        raise Rejection("unusable_json", "not a JSON object")
    missing = [key for key in required if not value.get(key)]
    if missing:
        raise Rejection("unusable_json", f"missing or empty: {', '.join(missing)}")
    return value, repaired


def string_list(value: Any, limit: int | None = None) -> list[str]:
    """A JSON list of strings (or one string) as a clean list of at most `limit` items (None: all)."""
    items = value if isinstance(value, list) else [value]
    cleaned = [str(item).strip() for item in items if isinstance(item, (str, int, float)) and str(item).strip()]
    return cleaned[:limit]


def object_schema(properties: dict[str, Any]) -> dict[str, Any]:
    """vLLM structured-output schema: an object with exactly these properties, all required, in order."""
    return {"type": "object", "required": list(properties), "additionalProperties": False, "properties": properties}


def string_array(min_length: int, max_length: int | None = None, max_items: int | None = None,
                 min_items: int | None = None) -> dict[str, Any]:
    """Schema of a list of strings, each bound is left out when None."""
    items = {"type": "string", "minLength": min_length, **({"maxLength": max_length} if max_length is not None else {})}
    bounds = {**({"minItems": min_items} if min_items is not None else {}),
              **({"maxItems": max_items} if max_items is not None else {})}
    return {"type": "array", **bounds, "items": items}


def list_schema(*keys: str, max_items: int | None) -> dict[str, Any]:
    """An object of non-empty string lists, each of at most `max_items` strings of at most 200
    characters when `max_items` is set (a small-model guard)."""
    array = string_array(2, 200 if max_items is not None else None, max_items, min_items=1)
    return object_schema({k: array for k in keys})
