"""A1111's reader of the "parameters" infotext, restated as test data.

Source: AUTOMATIC1111/stable-diffusion-webui modules/infotext_utils.py `parse_generation_parameters`
(the regex `re_param_code` and `re_imagesize` verbatim; the line handling as it does it). Easel
only writes infotext (common/infotext.py); the tests read it back the way A1111 does, so a
PNG of ours reproduces its settings in A1111 and on Civitai.
"""

from __future__ import annotations

import json
import re

RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")


def parse_generation_parameters(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, parameters) as A1111 reads them; a "WxH" value becomes KEY-1 and KEY-2."""
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
            value = json.loads(value)  # A1111's unquote: json.loads of a quoted value
        size = RE_IMAGESIZE.match(value)
        if size is not None:
            params[f"{key}-1"], params[f"{key}-2"] = size.group(1), size.group(2)
        else:
            params[key] = value
    return prompt, negative, params
