"""A1111 "parameters" infotext: write it so A1111 (and Civitai) read back the same values.

Format: `{prompt}\nNegative prompt: {negative}\n{k: v, k: v, …}`; the negative line is left out
when empty; a value containing `,`, `:` or a newline is JSON-quoted, which A1111's reader
(modules/infotext_utils.py `parse_generation_parameters`) unquotes; the tests read our infotext
back with that reader, restated as test data (tests/a1111_infotext.py). Torch-free.
"""

from __future__ import annotations

import json

KEY_ORDER = ("Steps", "Sampler", "Schedule type", "CFG scale", "Distilled CFG Scale", "Seed", "Size", "Model hash", "Model")


def quote(value: object) -> str:
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def build_infotext(prompt: str, negative: str, params: dict[str, object]) -> str:
    """`params` in any order; known keys are written in A1111's order, the rest after, None skipped."""
    ordered = [k for k in KEY_ORDER if k in params] + [k for k in params if k not in KEY_ORDER]
    line = ", ".join(f"{k}: {quote(params[k])}" for k in ordered if params[k] is not None)
    negative_line = f"\nNegative prompt: {negative}" if negative else ""
    return f"{prompt}{negative_line}\n{line}"


# The Dynamic Prompts extension's lines after the parameters (its PngInfoSaver): the templates a
# picture's prompt and negative prompt were expanded from.
TEMPLATE_KEYS = ("Template", "Negative Template")


def with_template(text: str, template: str, negative_template: str) -> str:
    """`text` with the extension's template lines after it (a template with a line break quoted)."""
    lines = [text]
    for key, value in zip(TEMPLATE_KEYS, (template, negative_template), strict=True):
        if value:
            lines.append(f"{key}: {json.dumps(value, ensure_ascii=False) if chr(10) in value else value}")
    return "\n".join(lines)
