"""Wildcards and dynamic prompts, as A1111's Dynamic Prompts extension reads them: `{red|blue}`,
`{0.5::red|blue}`, `{2$$a|b|c}`, `{1-3$$ and $$a|b|c}`, `__animals__` (a line of wildcards/animals.txt),
`__colors/warm__` (nested folders), `__colors/*__` and `__*__` (globs). The expansion is the
`dynamicprompts` library's (the extension's own), seeded with each picture's seed: the same seed
gives the same prompt, and each picture of a batch its own.

Wildcard files are untrusted text, read here and handed to the library in memory, so a name can only
ever mean a file that was read (`__../x__` names nothing): `.txt` files under the wildcard folders, at
most 2,000 of them, 1 MiB each and 20 MiB in all, UTF-8, lines of at most 1,000 characters (`#`
lines and blank lines skipped, as the extension skips them). Structured files as the library reads
them (its `wildcards/collection/structured.py`, `tree/build.py`): `.json` and `.yaml`, each list
under nested keys a wildcard named by the file's folder and the keys (`folder/key/subkey`; a file that
is one list, by its own name), its entries strings, `N::text` or `{"text": …, "weight": N}`; values of
other kinds skipped, as the library skips them. YAML is read safely (no tags), and a file whose keys
and entries pass 100,000 (aliases counted each time they are reached) is refused. A wildcard that can reach itself (`a`
holding `__b__`, `b` holding `__a__`, globs counted) is refused by name, as is a template whose
`$$` repetitions through its wildcards would make more than 10,000 pieces of text.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import EaselError

log = logging.getLogger(__name__)

MAX_FILES = 2000
MAX_FILE_BYTES = 1 << 20
MAX_TOTAL_BYTES = 20 << 20
MAX_LINE_CHARS = 1000
MAX_PIECES = 10_000
MAX_STRUCTURED_ITEMS = 100_000
WILDCARD_SUFFIXES = (".txt", ".json", ".yaml")  # the library's (not .yml)
_REFERENCE = re.compile(r"__([\w\-./*?]+?)__")
_REPEAT = re.compile(r"\{\s*(\d*)\s*(?:-\s*(\d*))?\s*\$\$")


class WildcardError(EaselError):
    """A template or a wildcard file that cannot be expanded; the message says which and why."""


def is_template(text: str) -> bool:
    """Whether `text` holds dynamic-prompt syntax (a variant or a wildcard) to expand."""
    return "{" in text or _REFERENCE.search(text) is not None


@dataclass
class Wildcards:
    """The wildcards read from the folders: name -> lines; `refused`: name -> why it is not offered."""

    values: dict[str, list[str]] = field(default_factory=dict)
    weights: dict[str, list[float]] = field(default_factory=dict)  # a structured file's weighted entries
    refused: dict[str, str] = field(default_factory=dict)
    _costs: dict[str, float] = field(default_factory=dict)

    def matching(self, reference: str) -> list[str]:
        return sorted(name for name in self.values if fnmatch.fnmatchcase(name, reference))

    def expand(self, template: str, seeds: list[int]) -> list[str]:
        """`template` expanded once per seed; WildcardError in one line when it cannot be."""
        self._check(template)
        from dynamicprompts.generators import RandomPromptGenerator
        from dynamicprompts.wildcards import WildcardManager
        from dynamicprompts.wildcards.collection.list import ListWildcardCollection
        from dynamicprompts.wildcards.item import WildcardItem
        from pyparsing import ParseBaseException

        collections: dict = dict(self.values)
        for name, weights in self.weights.items():
            collections[name] = ListWildcardCollection(
                [WildcardItem(text, weight) for text, weight in zip(self.values[name], weights, strict=True)]
            )
        manager = WildcardManager(root_map={"": [collections]})
        try:
            return [str(p) for p in RandomPromptGenerator(manager).generate(template, len(seeds), seeds=seeds)]
        except (ParseBaseException, ValueError, IndexError) as e:
            raise WildcardError(f"the prompt's {{…|…}} or __wildcard__ syntax cannot be read: {str(e)[:120]}") from None

    def _check(self, template: str) -> None:
        for reference in _REFERENCE.findall(template):
            if reference in self.refused:
                raise WildcardError(f"wildcard __{reference}__ is not offered: {self.refused[reference]}")
            if not self.matching(reference):
                raise WildcardError(f"no wildcard named __{reference}__; `wildcards list` shows them")
        if _cost(template, self) > MAX_PIECES:
            raise WildcardError(f"the prompt's repetitions ({{N$$…}}) would make more than {MAX_PIECES:,} pieces of text")


def _repeats(text: str) -> float:
    """The product of the text's `{N$$…}` counts (the upper bound of a range; 1 where none is given)."""
    product = 1.0
    for low, high in _REPEAT.findall(text):
        product *= max(int(high or low or 1), 1)
    return product


def _cost(text: str, wildcards: Wildcards) -> float:
    """An upper bound on the pieces of text expanding `text` can make (wildcards with no cycle)."""
    inner = sum(max((_name_cost(n, wildcards) for n in wildcards.matching(r)), default=1.0) for r in _REFERENCE.findall(text))
    return _repeats(text) * (1.0 + inner)


def _name_cost(name: str, wildcards: Wildcards) -> float:
    if name not in wildcards._costs:
        wildcards._costs[name] = math.inf  # while it is being worked out (no cycle is left by now)
        wildcards._costs[name] = max((_cost(line, wildcards) for line in wildcards.values[name]), default=1.0)
    return wildcards._costs[name]


def read_wildcards(folders: Iterable[Path]) -> Wildcards:
    """Every wildcard file under the folders (the first folder's file wins a name), then cycles refused."""
    found = Wildcards()
    total = files = 0
    for folder in folders:
        root = folder.resolve()
        if not root.is_dir():
            continue
        for path in _text_files(root):
            name = path.relative_to(root).with_suffix("").as_posix()
            if any(part.startswith(".") for part in path.relative_to(root).parts) or name in found.values:
                continue
            if path.suffix != ".txt":
                name = path.relative_to(root).as_posix()  # a structured file's wildcards are named by its keys
            files += 1
            if files > MAX_FILES:
                found.refused[name] = f"more than {MAX_FILES} wildcard files"
                continue
            try:
                real = path.resolve(strict=True)
                if not real.is_relative_to(root) or not real.is_file():
                    found.refused[name] = "a link out of the wildcard folder"
                    continue
                size = real.stat().st_size
                if size > MAX_FILE_BYTES or total + size > MAX_TOTAL_BYTES:
                    found.refused[name] = f"{size:,} bytes; at most {MAX_FILE_BYTES:,} a file and {MAX_TOTAL_BYTES:,} in all"
                    continue
                text = real.read_bytes().decode("utf-8-sig")
            except UnicodeDecodeError:
                found.refused[name] = "not UTF-8 text"
                continue
            except OSError as e:
                found.refused[name] = f"unreadable ({e.strerror or e})"
                continue
            total += size
            if path.suffix != ".txt":
                _read_structured(found, path, root, text)
                continue
            lines = [line.strip() for line in text.splitlines()]
            lines = [line for line in lines if line and not line.startswith("#")]
            if any(len(line) > MAX_LINE_CHARS or "\x00" in line for line in lines):
                found.refused[name] = f"a line longer than {MAX_LINE_CHARS} characters, or not text"
                continue
            found.values[name] = lines
    _refuse_cycles(found)
    return found


def _read_structured(found: Wildcards, path: Path, root: Path, text: str) -> None:
    """A `.json` or `.yaml` file's wildcards into `found` (the library's naming), or the file refused."""
    import yaml

    label = path.relative_to(root).as_posix()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        found.refused[label] = f"not valid {path.suffix[1:].upper()} ({str(e).splitlines()[0][:80]})"
        return
    folder = path.parent.relative_to(root).as_posix()
    prefix = () if folder == "." else (folder,)
    lists: dict[str, list[tuple[str, float]]] = {}
    budget = [MAX_STRUCTURED_ITEMS]

    def walk(value: object, keys: tuple[str, ...], depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0 or depth > 32:
            raise WildcardError(f"more than {MAX_STRUCTURED_ITEMS:,} keys and entries, or nested past 32 levels")
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and keys:
            lists["/".join(keys)] = _entries(value, budget)
        elif isinstance(value, dict):
            for key, inner in value.items():
                if isinstance(key, str) and inner:
                    walk(inner, (*keys, key), depth + 1)

    try:
        if isinstance(data, list):  # a file that is one list: named by the file
            lists["/".join((*prefix, path.stem))] = _entries(data, budget)
        else:
            walk(data, prefix, 0)
    except WildcardError as e:
        found.refused[label] = str(e)
        return
    for name, entries in lists.items():
        if name in found.values or not entries:
            continue
        texts = [entry for entry, _ in entries]
        if any(len(entry) > MAX_LINE_CHARS or "\x00" in entry for entry in texts):
            found.refused[name] = f"an entry longer than {MAX_LINE_CHARS} characters, or not text"
            continue
        found.values[name] = texts
        if any(weight != 1.0 for _, weight in entries):
            found.weights[name] = [weight for _, weight in entries]


def _entries(items: list, budget: list[int]) -> list[tuple[str, float]]:
    """A structured list's entries as the library reads them: text, `N::text`, or {text|content, weight}."""
    entries = []
    for item in items:
        budget[0] -= 1
        if budget[0] < 0:
            raise WildcardError(f"more than {MAX_STRUCTURED_ITEMS:,} keys and entries")
        if isinstance(item, str) and item:
            weight_text, separator, content = item.rpartition("::")
            if separator and item[0].isdigit():
                try:
                    entries.append((content, _weight(float(weight_text))))
                    continue
                except ValueError:
                    pass
            entries.append((item, 1.0))
        elif isinstance(item, dict):
            content = item.get("text") or item.get("content") or ""
            if isinstance(content, str) and content:
                try:
                    entries.append((content, _weight(float(item.get("weight", 1)))))
                except (TypeError, ValueError):
                    raise WildcardError(f"the weight of {content[:40]!r} is not a number") from None
    return entries


def _weight(value: float) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(value)
    return value


def _text_files(root: Path) -> list[Path]:
    """The folder's `.txt` files in name order, the walk stopped one past MAX_FILES (a folder set to
    something huge costs a bounded walk, and its excess is refused)."""
    found = list(itertools.islice((p for p in root.rglob("*") if p.suffix in WILDCARD_SUFFIXES), MAX_FILES + 1))
    return sorted(found)


def _refuse_cycles(wildcards: Wildcards) -> None:
    """Refuse every wildcard from which expanding can come back to a wildcard already being expanded."""
    edges = {
        name: {m for line in lines for ref in _REFERENCE.findall(line) for m in wildcards.matching(ref)}
        for name, lines in wildcards.values.items()
    }
    state: dict[str, int] = {}  # 1: on the path, 2: done and safe
    bad: dict[str, str] = {}

    def visit(start: str) -> None:
        stack = [(start, iter(sorted(edges[start])))]
        path = [start]
        state[start] = 1
        while stack:
            name, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[name] = 2
                continue
            if child in bad:
                for node in path:
                    bad.setdefault(node, bad[child])
            elif state.get(child) == 1:
                loop = " → ".join([*path[path.index(child) :], child])
                for node in path:
                    bad.setdefault(node, f"it leads back to itself ({loop})")
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(edges[child]))))

    for name in sorted(edges):
        if name not in state:
            visit(name)
    for name, why in bad.items():
        wildcards.values.pop(name, None)
        wildcards.refused[name] = why
        log.warning("wildcard %s refused: %s", name, why)


def wildcard_folders(models_root: Path, configured: list[Path]) -> list[Path]:
    """EASEL_WILDCARD_DIRS, else models/wildcards and, for A1111's layout (models/Stable-diffusion),
    its Dynamic Prompts extension's folder."""
    if configured:
        return configured
    folders = [models_root / "wildcards"]
    if models_root.name.lower() == "stable-diffusion":
        folders.append(models_root.parent.parent / "extensions" / "sd-dynamic-prompts" / "wildcards")
    return folders


class WildcardLibrary:
    """The wildcard folders, read again when a file in them changes (name, size or time)."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders = folders
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self._read = Wildcards()

    def current(self) -> Wildcards:
        """The wildcards as the folders hold them now (blocking: call it off the event loop)."""
        signature = []
        for folder in self.folders:
            if folder.is_dir():
                for path in _text_files(folder.resolve()):
                    try:
                        stat = path.stat()
                    except OSError:
                        continue
                    signature.append((str(path), stat.st_size, stat.st_mtime_ns))
        if tuple(signature) != self._signature:
            self._read = read_wildcards(self.folders)
            self._signature = tuple(signature)
        return self._read
