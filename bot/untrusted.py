"""JSON and text from files and servers we do not control (sidecars, metadata, Civitai answers).

`json.loads` alone accepts what breaks us later: nesting that overflows the recursion limit when
the value is printed or stored, 5,000-digit integers that cannot be printed, NaN, and lone
surrogates (`"\\ud800"`) that neither a terminal nor SQLite will take. `load_json` refuses the
first three with a ValueError and mends the last, walking the value iteratively.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 32
_MAX_DIGITS = 40
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD, so it can be printed and stored."""
    return text if text.isascii() or not _LONE_SURROGATE.search(text) else _LONE_SURROGATE.sub("\ufffd", text)


def has_lone_surrogate(text: str) -> bool:
    return not text.isascii() and _LONE_SURROGATE.search(text) is not None


class RefusedValue(ValueError):
    """A JSON value refused while parsing (too long a number, NaN); the message names it."""


def bounded_int(digits: str, max_digits: int = _MAX_DIGITS) -> int:
    """json.loads' parse_int: Python refuses to print integers past 4,300 digits, so refuse them here."""
    if len(digits.lstrip("-")) > max_digits:
        raise RefusedValue(f"a {len(digits)}-digit number")
    return int(digits)


def no_constant(name: str) -> float:
    """json.loads' parse_constant: NaN and Infinity are not JSON."""
    raise RefusedValue(f"{name}, which is not valid JSON")


def load_json(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse `text`; ValueError (with a short reason) when it is not JSON we can safely keep."""
    try:
        value = json.loads(text, parse_int=bounded_int, parse_constant=no_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    return _mend(value, max_depth)


def _mend(value: Any, max_depth: int) -> Any:
    """Check depth and clean strings in place, without recursion (JSON values form a tree)."""
    if isinstance(value, str):
        return clean_text(value)
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > max_depth:
            raise ValueError(f"JSON nested more than {max_depth} deep")
        if isinstance(node, dict):
            for key in list(node):
                item = node[key]
                if isinstance(key, str) and has_lone_surrogate(key):
                    del node[key]
                    key = clean_text(key)
                node[key] = clean_text(item) if isinstance(item, str) else item
                if isinstance(item, dict | list):
                    pending.append((item, depth + 1))
        elif isinstance(node, list):
            for i, item in enumerate(node):
                if isinstance(item, str):
                    node[i] = clean_text(item)
                elif isinstance(item, dict | list):
                    pending.append((item, depth + 1))
    return value
