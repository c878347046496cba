"""A1111 "parameters" infotext: write it so A1111 (and Civitai) read back the same values.

Format: `{prompt}\nNegative prompt: {negative}\n{k: v, k: v, …}`; the negative line is left out
when empty; a value containing `,`, `:` or a newline is JSON-quoted. The parser is A1111's
(modules/infotext_utils.py `parse_generation_parameters`), regex and all. Torch-free.
"""

from __future__ import annotations

import json
import re

# A1111's own pattern for the key/value line.
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
KEY_ORDER = ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model")


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


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative, params) exactly as A1111 reads them; Size stays "WxH"."""
    prompt, negative = "", ""
    done_with_prompt = False
    *lines, last = text.strip().split("\n")
    if len(RE_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    params: dict[str, str] = {}
    for key, value in RE_PARAM.findall(last):
        if value and value[0] == '"' and value[-1] == '"':
            value = json.loads(value)
        params[key] = value
    return prompt, negative, params
