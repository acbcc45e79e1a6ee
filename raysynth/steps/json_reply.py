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


def list_schema(*keys: str, max_items: int | None) -> dict[str, Any]:
    """vLLM structured-output schema: an object of non-empty string lists, each of at most
    `max_items` strings of at most 200 characters when `max_items` is set (a small-model guard)."""
    if max_items is None:
        array = {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 2}}
    else:
        array = {"type": "array", "minItems": 1, "maxItems": max_items,
                 "items": {"type": "string", "minLength": 2, "maxLength": 200}}
    return {"type": "object", "required": list(keys), "additionalProperties": False,
            "properties": {k: array for k in keys}}
