"""Regional prompting's cross-attention on a diffusers UNet (the Regional Prompter's Attention mode).

Facts from hako-mikan/sd-webui-regional-prompter scripts/attention.py (`hook_forward`, `matsepcalc`,
`split_dims`): at every cross-attention layer each region's attention is computed over the whole
latent with that region's tokens only, and kept inside the region; with a base prompt, each region's
result is mixed with the base prompt's at the region's base ratio. A layer's grid is the latent's,
halved (rounding up) until it has as many places as the layer. Rows of a batch whose negative prompt
is not split like the prompt (common/regions.py) attend to all of their negative, as without regions.

The processor wraps whatever processor the layer had (diffusers' scaled-dot-product one, or the sliced
one the memory savers set), so the regions' results are those of plain attention on their tokens; its
output projection is affine per place and the regions tile the picture, so mixing the projected
results is mixing the attention's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from common.prompt_chunks import Chunk
from common.regions import Cell, RegionError, RegionPlan, RegionSettings, plan

TOKENS = 77  # a chunk's tokens, BOS and EOS included


@dataclass(frozen=True)
class RowLayout:
    """One batch row's regions: each with its tokens [start, end), and the base prompt's tokens."""

    cells: tuple[tuple[Cell, int, int], ...]
    base: tuple[int, int] | None


def plans_for(regions: str, texts: Sequence[tuple[str, str]]) -> list[RegionPlan | None]:
    """Each picture's plan from its (prompt, negative); all None when the job draws no regions."""
    if not regions:
        return [None] * len(texts)
    settings = RegionSettings.parse(regions)
    return [plan(prompt, negative, settings) for prompt, negative in texts]


def _part_spans(chunks: Sequence[Chunk]) -> list[tuple[int, int]]:
    """Each BREAK-separated part's chunks, [first, end), in order."""
    spans: list[tuple[int, int]] = []
    for number, chunk in enumerate(chunks):
        if chunk.part == len(spans) - 1:
            spans[-1] = (spans[-1][0], number + 1)
        else:
            spans.append((number, number + 1))
    return spans


def row_layout(chunks: Sequence[Chunk], region_plan: RegionPlan) -> RowLayout:
    """Where each region's tokens lie in a text's encoding (its chunks, as common/prompt_chunks.py cut them)."""
    spans = _part_spans(chunks)
    if len(spans) < region_plan.parts:
        raise RegionError(f"regions: this prompt has {len(spans)} parts at some step, and {region_plan.parts} are needed")
    at, base = 0, None
    if region_plan.base:
        base = (spans[0][0] * TOKENS, spans[0][1] * TOKENS)
        at = 1
    cells = []
    for cell in region_plan.cells:
        cells.append((cell, spans[at][0] * TOKENS, spans[at + cell.parts - 1][1] * TOKENS))
        at += cell.parts
    return RowLayout(tuple(cells), base)


def negative_layout(negative: Sequence[Chunk], positive: Sequence[Chunk], region_plan: RegionPlan) -> RowLayout | None:
    """The negative split as the prompt is, when it has as many parts and chunks (the extension's
    `eq`); None: every region reads all of it."""
    parts = len(_part_spans(negative))
    if parts != len(_part_spans(positive)) or len(negative) != len(positive) or parts < region_plan.parts:
        return None
    return row_layout(negative, region_plan)


def _edge(fraction: float, size: int) -> int:
    return size if fraction >= 0.999 else int(size * fraction + 1e-6)


class RegionalAttention:
    """What the processors read: the rows' layouts at this step, and the pass's latent size."""

    def __init__(self, latent_size: tuple[int, int]) -> None:
        self.latent_size = latent_size  # (height, width) of the pass's latents
        self.cond: list[RowLayout | None] = []
        self.uncond: list[RowLayout | None] = []
        self._masks: dict[tuple[int, int, Cell, torch.device, torch.dtype], torch.Tensor] = {}
        self._groups: dict[tuple[int, torch.device], list[tuple[RowLayout | None, torch.Tensor]]] = {}

    def set(self, cond: list[RowLayout | None], uncond: list[RowLayout | None]) -> None:
        self.cond, self.uncond = cond, uncond
        self._groups.clear()

    def groups(self, batch: int, device: torch.device) -> list[tuple[RowLayout | None, torch.Tensor]]:
        """A model call's rows gathered by layout (each layout's rows attend together), once per step."""
        if (batch, device) not in self._groups:
            members: dict[RowLayout | None, list[int]] = {}
            for number, layout in enumerate(self.rows(batch)):
                members.setdefault(layout, []).append(number)
            self._groups[(batch, device)] = [
                (layout, torch.tensor(rows, device=device, dtype=torch.long)) for layout, rows in members.items()
            ]
        return self._groups[(batch, device)]

    def rows(self, batch: int) -> list[RowLayout | None]:
        """The layouts of a model call's rows: the pictures', after their negatives' when guided."""
        if batch == len(self.cond):
            return self.cond
        if batch == 2 * len(self.cond):
            return self.uncond + self.cond  # diffusers puts the negative first
        raise RuntimeError(f"regional attention: {batch} rows for {len(self.cond)} pictures")

    def grid(self, places: int) -> tuple[int, int]:
        height, width = self.latent_size
        while height * width > places:
            height, width = math.ceil(height / 2), math.ceil(width / 2)
        if height * width != places:
            raise RuntimeError(f"regional attention: no grid of the {self.latent_size} latent has {places} places")
        return height, width

    def mask(self, cell: Cell, grid: tuple[int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (*grid, cell, device, dtype)
        if key not in self._masks:
            height, width = grid
            mask = torch.zeros(height, width, device=device, dtype=dtype)
            mask[_edge(cell.top, height) : _edge(cell.bottom, height), _edge(cell.left, width) : _edge(cell.right, width)] = 1
            self._masks[key] = mask.reshape(1, height * width, 1)
        return self._masks[key]


class RegionalProcessor:
    """A cross-attention layer's processor that attends region by region (see the module's text)."""

    def __init__(self, inner, state: RegionalAttention) -> None:
        self.inner, self.state = inner, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        def plain(states: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
            extra = {"temb": temb} if temb is not None else {}
            return self.inner(attn, states, encoder_hidden_states=context, attention_mask=attention_mask, **extra)

        groups = self.state.groups(hidden_states.shape[0], hidden_states.device)
        if encoder_hidden_states is None or all(layout is None for layout, _ in groups):
            return plain(hidden_states, encoder_hidden_states)
        if attention_mask is not None:
            raise RuntimeError("regional attention: the pipeline passed a cross-attention mask")
        out: torch.Tensor | None = None
        for layout, index in groups:
            states, context = hidden_states.index_select(0, index), encoder_hidden_states.index_select(0, index)
            result = plain(states, context) if layout is None else self._regions(layout, states, context, plain)
            if out is None:
                out = torch.empty((hidden_states.shape[0], *result.shape[1:]), device=result.device, dtype=result.dtype)
            out.index_copy_(0, index, result)
        assert out is not None
        return out

    def _regions(self, layout: RowLayout, states: torch.Tensor, context: torch.Tensor, plain) -> torch.Tensor:
        grid = self.state.grid(states.shape[1])
        base = plain(states, context[:, layout.base[0] : layout.base[1]]) if layout.base else None
        total: torch.Tensor | None = None
        for cell, start, end in layout.cells:
            result = plain(states, context[:, start:end])
            if base is not None:
                result = result * (1 - cell.base) + base * cell.base
            part = result * self.state.mask(cell, grid, result.device, result.dtype)
            total = part if total is None else total + part
        assert total is not None
        return total


@contextmanager
def regional_attention(unet, state: RegionalAttention) -> Iterator[None]:
    """The UNet's cross-attention layers attend region by region for the block's length."""
    before = unet.attn_processors
    unet.set_attn_processor(
        {name: RegionalProcessor(p, state) if name.endswith("attn2.processor") else p for name, p in before.items()}
    )
    try:
        yield
    finally:
        unet.set_attn_processor(before)
