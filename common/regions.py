"""Regional prompting as hako-mikan's Regional Prompter reads it: its Matrix mode, Attention calculation.

Followed (facts, not code) from hako-mikan/sd-webui-regional-prompter, scripts/rp.py (`process`,
`keyconverter`, `bckeydealer`, `blankdealer`, `commondealer`, `tokendealer`), scripts/regions.py
(`split_l2`, `makeimgtmp`, `matrixdealer`, `ratiosdealer`) and its README:
- The prompt names its regions with `ADDCOL` / `ADDROW` (or `BREAK`s, which the divide ratio's
  template turns into those keys, first to last); `ADDBASE` ends a base prompt mixed into every region
  at the base ratio, `ADDCOMM` a common part prepended to every region's prompt (", " between). With
  regional prompting on, `AND` is read as `BREAK`.
- The divide ratio `1,2,1;2,4,6`: rows split by `;`, each row's first number its height, the rest its
  columns' widths (Columns, the default). "Rows" swaps the two: columns first, each split into rows.
  A ratio with no `;` and a prompt with only one kind of key is one row (or one column) of regions.
  Ratios are relative; too few repeat their last value, too many are ignored (the prompt's keys fix
  how many regions there are). Base ratios take the same shape (one number: every region).
- Every key becomes `BREAK`, so each region's prompt starts its own 77-token chunks; a region reads
  only its chunks (gpu_worker/regional_attention.py). A last region left blank gets `_` to read.
- The negative prompt is split the same way only when it has as many BREAK parts, and as many chunks,
  as the prompt (that is checked where the chunks are counted); otherwise every region reads all of it.

Where we differ, on purpose: keys and `AND` count as whole words only (the extension replaces the
letters anywhere, `ANDROID` included); a region whose text holds further BREAKs reads all of its parts
(the extension means to, but reads only the first); the Mask and Prompt modes, Random submode and the
Latent calculation are not offered (a pasted picture that used them is refused by name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from common.errors import EaselError
from common.prompt_schedule import prompt_schedule

KEY_COMMON, KEY_BASE, KEY_ROW, KEY_COL, BREAK = "ADDCOMM", "ADDBASE", "ADDROW", "ADDCOL", "BREAK"
DEFAULT_RATIOS = "1,1"
DEFAULT_BASE_RATIO = "0.2"  # the extension's own default in its settings
MAX_REGIONS = 16  # each region is one more cross-attention per layer and step
MAX_SETTINGS_LENGTH = 200
_WORD = {key: re.compile(rf"\b{key}\b") for key in (KEY_COMMON, KEY_BASE, KEY_ROW, KEY_COL, BREAK, "AND")}
_RATIOS = re.compile(r"[0-9.,;\s]+")
_ALL_KEYS = re.compile(rf"\b(?:{KEY_COMMON}|{KEY_BASE}|{KEY_ROW}|{KEY_COL})\b")


class RegionError(EaselError):
    """A divide ratio or a regional prompt that cannot be drawn; the message says why, in one line."""


@dataclass(frozen=True)
class RegionSettings:
    """What the extension's panel holds for Matrix mode: `1,2;1,1 rows base 0.3 common`."""

    ratios: str = DEFAULT_RATIOS
    rows: bool = False  # its Matrix submode "Rows" (the code's "Vertical"); False: "Columns"
    base: bool = False  # "Use base prompt" (ADDBASE in the prompt turns it on too)
    base_ratios: str = DEFAULT_BASE_RATIO
    common: bool = False  # "Use common prompt" (ADDCOMM)
    ncommon: bool = False  # "Use common negative prompt"

    @classmethod
    def parse(cls, text: str) -> RegionSettings:
        """The `regions` option as written: a divide ratio, then any of `rows`, `columns`, `base [R]`,
        `common`, `ncommon`."""
        if len(text) > MAX_SETTINGS_LENGTH:
            raise RegionError(f"regions: at most {MAX_SETTINGS_LENGTH} characters")
        words = re.sub(r"\s*([,;])\s*", r"\1", text.replace("=", " ").replace(":", " ")).split()
        settings, ratios = cls(), None
        i = 0
        while i < len(words):
            word = words[i].lower()
            if word in ("rows", "columns"):
                settings = replace(settings, rows=word == "rows")
            elif word == "base":
                settings = replace(settings, base=True)
                if i + 1 < len(words) and _RATIOS.fullmatch(words[i + 1]):
                    i += 1
                    settings = replace(settings, base_ratios=_checked_base(words[i]))
            elif word in ("common", "ncommon"):
                settings = replace(settings, **{word: True})
            elif _RATIOS.fullmatch(word) and ratios is None:
                ratios = _checked_ratios(word)
            else:
                raise RegionError(
                    f"regions: {words[i]!r} is not understood; write a divide ratio such as 1,1 or 1,2;1,1, then "
                    "any of rows, base 0.2, common, ncommon"
                )
            i += 1
        return replace(settings, ratios=ratios or DEFAULT_RATIOS)

    def text(self) -> str:
        """The canonical form, which `parse` reads back to the same settings."""
        words = [self.ratios]
        if self.rows:
            words.append("rows")
        if self.base:
            words += ["base"] + ([self.base_ratios] if self.base_ratios != DEFAULT_BASE_RATIO else [])
        words += [word for word, on in (("common", self.common), ("ncommon", self.ncommon)) if on]
        return " ".join(words)


def _numbers(text: str, what: str) -> list[float]:
    values = []
    for part in re.split(r"[,;]", text):
        try:
            values.append(float(part))
        except ValueError:
            found = repr(part.strip()) if part.strip() else "an empty place"
            raise RegionError(f"regions: {what} {text!r} has {found} where a number goes") from None
    return values


def _checked_ratios(text: str) -> str:
    text = re.sub(r"\s+", "", text)
    for value in _numbers(text, "the divide ratio"):
        if not 0 < value < 1e6:
            raise RegionError(f"regions: divide ratios are positive numbers, not {value:g}")
    return text


def _checked_base(text: str) -> str:
    text = re.sub(r"\s+", "", text)
    for value in _numbers(text, "the base ratio"):
        if not 0 <= value <= 1:
            raise RegionError(f"regions: base ratios are between 0 and 1, not {value:g}")
    return text


def active(prompt: str, regions: str) -> bool:
    """Whether a job draws regions: it names a divide ratio, or its prompt places ADDCOL/ADDROW."""
    return bool(regions.strip()) or bool(_WORD[KEY_COL].search(prompt) or _WORD[KEY_ROW].search(prompt))


@dataclass(frozen=True)
class Cell:
    """One region: where it lies (fractions of the picture) and what of the prompt it reads."""

    top: float
    bottom: float
    left: float
    right: float
    parts: int  # BREAK-separated parts of the prompt it reads, in order after the previous region's
    base: float  # the base prompt's share of its attention (with a base prompt)


@dataclass(frozen=True)
class RegionPlan:
    """A prompt made ready for regional attention: the texts the model reads (every key a BREAK, the
    common part added) and the regions, in the order of their parts."""

    prompt: str
    negative: str
    cells: tuple[Cell, ...]
    base: bool  # the prompt's first part is the base prompt
    settings: RegionSettings

    @property
    def parts(self) -> int:
        return int(self.base) + sum(cell.parts for cell in self.cells)


def _replace_first(pattern: re.Pattern[str], text: str, new: str) -> str:
    return pattern.sub(new, text, count=1)


def _template_keys(settings: RegionSettings) -> list[str]:
    """The keys the extension's template puts where BREAKs are, in order (regions.py `makeimgtmp`)."""
    if ";" not in settings.ratios:
        cells = [[1.0] * len(settings.ratios.split(","))]
    else:
        _, cells = _split_plain(settings.ratios, flip=settings.rows)
    inner, outer = (KEY_ROW, KEY_COL) if settings.rows else (KEY_COL, KEY_ROW)
    keys: list[str] = []
    for number, row in enumerate(cells):
        keys += [inner] * (len(row) - 1)
        if number < len(cells) - 1:
            keys.append(outer)
    return ([KEY_COMMON] if settings.common else []) + ([KEY_BASE] if settings.base else []) + keys


def _split_plain(text: str, flip: bool) -> tuple[list[float], list[list[float]]]:
    """A ratio string into each row's own number and its cells' numbers (no structure to follow)."""
    outer, inner = (",", ";") if flip else (";", ",")
    rows = [[float(x) if x else 1.0 for x in row.split(inner)] for row in text.split(outer)]
    return [row[0] for row in rows], [row[1:] if len(row) > 1 else row for row in rows]


def _split_to(text: str, shape: list[list[int]], flip: bool, singles: bool, default: float) -> tuple[list[float], list[list[float]]]:
    """Numbers laid onto the prompt's shape by the extension's broadcast rules (regions.py `split_l2`
    with a base structure): a short row repeats its last number, a long one spills into the next
    row, rows missing repeat the last number; with `singles`, each row's first number is its own."""
    outer, inner = (",", ";") if flip else (";", ",")
    cells: list[list[float]] = []
    own: list[float] = []
    last = 1.0
    r = 0
    for row_text in text.split(outer):
        row = [float(x) if x.strip() else default for x in row_text.split(inner)]
        last = row[-1]
        while r < len(shape) and row:
            if singles:
                own.append(row[0])
                if len(row) > 1:
                    row = row[1:]
            width = len(shape[r])
            if width >= len(row):
                cells.append(row + [row[-1]] * (width - len(row)))
                r += 1
                break
            cells.append(row[:width])
            row = row[width:]
            r += 1
    while len(cells) < len(shape):
        cells.append([last] * len(shape[len(cells)]))
    if singles:
        own += [own[-1] if own else 1.0] * (len(shape) - len(own))
    return own, cells


def _spans(values: list[float]) -> list[tuple[float, float]]:
    """Relative sizes to (start, end) fractions, in order."""
    total = sum(values)
    spans, start = [], 0.0
    for value in values:
        end = start + value / total
        spans.append((start, end))
        start = end
    return spans


def _shape(structure_prompt: str, flip: bool) -> list[list[int]]:
    """Rows (columns with `flip`) of regions, each the number of further BREAKs in its text."""
    outer, inner = (_WORD[KEY_COL], _WORD[KEY_ROW]) if flip else (_WORD[KEY_ROW], _WORD[KEY_COL])
    return [[len(_WORD[BREAK].findall(cell)) for cell in inner.split(row)] for row in outer.split(structure_prompt)]


def _to_breaks(text: str) -> str:
    return _ALL_KEYS.sub(BREAK, _WORD["AND"].sub(BREAK, text))


def _with_common(text: str) -> str:
    parts = _WORD[BREAK].split(text)
    return f" {BREAK} ".join(f"{parts[0].strip()}, {part.strip()}" for part in parts[1:])


def plan(prompt: str, negative: str, settings: RegionSettings) -> RegionPlan:
    """The regions of `prompt` under `settings`, and the texts the model reads; RegionError when the
    prompt does not hold the regions it asks for."""
    structure = _WORD["AND"].sub(BREAK, prompt)
    for key in _template_keys(settings):  # rp.py `keyconverter`: BREAKs become the template's keys
        if key in (KEY_COMMON, KEY_BASE) and _WORD[key].search(structure):
            continue
        structure = _replace_first(_WORD[BREAK], structure, key)
    common = settings.common or bool(_WORD[KEY_COMMON].search(structure))
    base = settings.base or bool(_WORD[KEY_BASE].search(structure))
    if common and not _WORD[KEY_COMMON].search(structure):
        structure = _replace_first(_WORD[BREAK], structure, KEY_COMMON)
    if base and not _WORD[KEY_BASE].search(structure):
        structure = _replace_first(_WORD[BREAK], structure, KEY_BASE)
    for key in (KEY_COMMON, KEY_BASE):  # regions.py `matrixdealer`: the regions follow those parts
        if _WORD[key].search(structure):
            structure = _WORD[key].split(structure, maxsplit=1)[1]
    flip = settings.rows
    shape = _shape(structure, flip)
    has_row, has_col = bool(_WORD[KEY_ROW].search(structure)), bool(_WORD[KEY_COL].search(structure))
    ratios = settings.ratios
    if not (has_row or has_col):
        if len(_numbers(ratios, "the divide ratio")) > 1:
            raise RegionError("regions: separate the regions' prompts with ADDCOL or ADDROW (or BREAK)")
        own, widths = [1.0], [[1.0]]  # a ratio of one number: one region, the whole picture
    elif ";" not in ratios and has_row != has_col:  # one row (or column) of regions from a 1-D ratio
        if has_row == flip:
            own, widths = _split_to("1," + ratios, shape, flip=False, singles=True, default=1.0)
        else:
            own, widths = _split_to(ratios, shape, flip=True, singles=True, default=1.0)
    else:
        own, widths = _split_to(ratios, shape, flip=flip, singles=True, default=1.0)
    _, bases = _split_to(settings.base_ratios, shape, flip=flip, singles=False, default=0.0)
    cells = []
    for (outer_start, outer_end), row, row_bases, row_shape in zip(_spans(own), widths, bases, shape, strict=True):
        for (inner_start, inner_end), share, breaks in zip(_spans(row), row_bases, row_shape, strict=True):
            if flip:  # columns first: the outer span is across, the inner down
                cells.append(Cell(inner_start, inner_end, outer_start, outer_end, breaks + 1, share))
            else:
                cells.append(Cell(outer_start, outer_end, inner_start, inner_end, breaks + 1, share))
    if len(cells) > MAX_REGIONS:
        raise RegionError(f"regions: at most {MAX_REGIONS} regions, not {len(cells)}")
    text = _to_breaks(prompt)
    parts = _WORD[BREAK].split(text)
    if parts[-1].strip() in ("", ","):  # rp.py `blankdealer`
        text += " _"
    if common:
        text = _with_common(text)
    negative_text = _to_breaks(negative)
    ncommon = settings.ncommon or bool(_WORD[KEY_COMMON].search(negative))
    if ncommon and len(_WORD[BREAK].split(negative_text)) > 1:
        negative_text = _with_common(negative_text)
    made = RegionPlan(text, negative_text, tuple(cells), base, replace(settings, base=base, common=common, ncommon=ncommon))
    have = len(_WORD[BREAK].split(text))
    if have < made.parts:
        raise RegionError(
            f"regions: the prompt has {have} parts, and {made.parts} are needed"
            + (" (the base prompt first, ended by ADDBASE)" if base else "")
        )
    return made


INFOTEXT_KEYS = (
    "RP Active", "RP Divide mode", "RP Matrix submode", "RP Mask submode", "RP Prompt submode", "RP Calc Mode",
    "RP Ratios", "RP Base Ratios", "RP Use Base", "RP Use Common", "RP Use Ncommon", "RP Options",
    "RP LoRA Neg Te Ratios", "RP LoRA Neg U Ratios", "RP threshold", "RP LoRA Stop Step", "RP LoRA Hires Stop Step",
    "RP Flip",
)  # fmt: skip


def infotext_pairs(settings: RegionSettings) -> dict[str, str]:
    """What the extension writes in a picture's parameters (rp.py `process`), for these settings; the
    Mask and Prompt modes' fields at the extension's defaults, as it writes them when unused."""
    return {
        "RP Active": "True",
        "RP Divide mode": "Matrix",
        "RP Matrix submode": "Rows" if settings.rows else "Columns",
        "RP Mask submode": "Mask",
        "RP Prompt submode": "Prompt",
        "RP Calc Mode": "Attention",
        "RP Ratios": settings.ratios,
        "RP Base Ratios": settings.base_ratios,
        "RP Use Base": str(settings.base),
        "RP Use Common": str(settings.common),
        "RP Use Ncommon": str(settings.ncommon),
        "RP LoRA Neg Te Ratios": "0",
        "RP LoRA Neg U Ratios": "0",
        "RP threshold": "0.4",
        "RP LoRA Stop Step": "0",
        "RP LoRA Hires Stop Step": "0",
        "RP Flip": "False",
    }


def from_infotext(pairs: dict[str, str]) -> str:
    """The `regions` setting a picture's parameters ask for ("" when the extension was off); RegionError
    for what only the extension's other modes draw."""
    if pairs.get("RP Active", "").strip().lower() != "true":
        return ""
    mode = pairs.get("RP Divide mode", "Matrix").strip()
    calculation = pairs.get("RP Calc Mode", "Attention").strip()
    submode = pairs.get("RP Matrix submode", "Columns").strip()
    if mode not in ("Matrix", "Nope"):
        raise RegionError(f"this picture used the Regional Prompter's {mode} mode; Easel draws its Matrix mode only")
    if calculation != "Attention":
        raise RegionError(f"this picture used the Regional Prompter's {calculation} mode; Easel draws its Attention mode only")
    if submode not in ("Columns", "Rows", "Horizontal", "Vertical"):
        raise RegionError(f"this picture used the Regional Prompter's {submode} submode; Easel draws Columns and Rows")
    ratios = pairs.get("RP Ratios", DEFAULT_RATIOS).strip() or DEFAULT_RATIOS
    if pairs.get("RP Flip", "").strip().lower() == "true":  # rp.py `changecs`: `,` and `;` swapped
        ratios = ratios.translate(str.maketrans(",;", ";,"))
    truth = {key: pairs.get(key, "").strip().lower() == "true" for key in ("RP Use Base", "RP Use Common", "RP Use Ncommon")}
    settings = RegionSettings(
        ratios=_checked_ratios(ratios),
        rows=submode in ("Rows", "Vertical"),
        base=truth["RP Use Base"],
        base_ratios=_checked_base(pairs.get("RP Base Ratios", DEFAULT_BASE_RATIO).strip() or DEFAULT_BASE_RATIO),
        common=truth["RP Use Common"],
        ncommon=truth["RP Use Ncommon"],
    )
    return settings.text()


def check(prompt: str, negative: str, settings: RegionSettings, steps: int) -> RegionPlan:
    """The plan, checked at every step's text of the prompt's editing schedule (each must hold the
    regions' parts); RegionError when one does not."""
    made = plan(prompt, negative, settings)
    for _, text in prompt_schedule(made.prompt, max(1, steps)):
        have = len(_WORD[BREAK].split(text))
        if have < made.parts:
            raise RegionError(f"regions: at some step the prompt has {have} parts, and {made.parts} are needed")
    return made


def describe(made: RegionPlan) -> list[dict[str, object]]:
    """Each region of a plan: where it lies (percent of the picture) and the text it reads."""
    parts = [part.strip() for part in _WORD[BREAK].split(made.prompt)]
    at = 1 if made.base else 0
    regions = []
    for cell in made.cells:
        regions.append(
            {
                "left": round(cell.left * 100),
                "right": round(cell.right * 100),
                "top": round(cell.top * 100),
                "bottom": round(cell.bottom * 100),
                "text": f" {BREAK} ".join(parts[at : at + cell.parts]),
                "base": cell.base if made.base else None,
            }
        )
        at += cell.parts
    return regions


def region_map(cells: tuple[Cell, ...], width: int = 24, height: int = 8) -> list[str]:
    """The regions as rows of characters, each place marked with its region's number (1-9, then a-g)."""
    marks = "123456789abcdefg"
    rows = []
    for y in range(height):
        row = ""
        for x in range(width):
            fx, fy = (x + 0.5) / width, (y + 0.5) / height
            found = next(
                (n for n, c in enumerate(cells) if c.left <= fx < c.right and c.top <= fy < c.bottom), len(cells) - 1
            )
            row += marks[found]
        rows.append(row)
    return rows
