"""The packages' layers: imports only go down (diffusers' rule: pipelines → models, never back).

common/      what the bot and the worker both speak; imports neither
gpu_worker/  torch and diffusers; imports common only
bot/         Discord-free services; imports common only (the worker is a process, never a module)
cogs/        Discord; imports bot and common
cli/         the command line; imports bot, cogs (to run the bot) and common
bot.py       the entry point; imports cli
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "gpu_worker", "bot", "cogs", "cli")
MAY_IMPORT = {
    "common": set(),
    "gpu_worker": {"common"},
    "bot": {"common"},
    "cogs": {"bot", "common"},
    "cli": {"bot", "cogs", "common"},
    "bot.py": {"cli"},
}
# Only the worker may load these; a bot that imported them would hold gigabytes it never uses.
# (transformers is not here: the bot uses its CLIP tokenizer, which needs no torch, to count tokens.)
WORKER_ONLY = {"torch", "diffusers", "peft", "spandrel", "onnxruntime", "safetensors", "accelerate"}


def _modules(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def _layer(path: Path) -> str:
    relative = path.relative_to(ROOT)
    return relative.parts[0] if len(relative.parts) > 1 else relative.name


def _sources() -> list[Path]:
    return [ROOT / "bot.py", *sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))]


def import_edges() -> list[tuple[str, str, str]]:
    """(file:line, its layer, the package it imports) for every import of one of our packages or a
    worker-only library."""
    edges = []
    for path in _sources():
        layer = _layer(path)
        for line, module in _modules(ast.parse(path.read_text(), str(path))):
            top = module.split(".")[0]
            if (top in PACKAGES and top != layer) or top in WORKER_ONLY:
                edges.append((f"{path.relative_to(ROOT)}:{line}", layer, top))
    return edges


def test_imports_only_go_down() -> None:
    wrong = [
        f"{where}: {layer} imports {target}"
        for where, layer, target in import_edges()
        if target in PACKAGES and target not in MAY_IMPORT[layer]
    ]
    assert not wrong, "\n".join(wrong)


def test_only_the_worker_loads_torch_and_diffusers() -> None:
    wrong = [
        f"{where}: {layer} imports {target}"
        for where, layer, target in import_edges()
        if target in WORKER_ONLY and layer != "gpu_worker"
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("layer", "source", "expected"),
    [
        ("bot", "from gpu_worker.runner import BatchRunner\n", "bot imports gpu_worker"),
        ("gpu_worker", "import bot.jobs\n", "gpu_worker imports bot"),
        ("common", "def f():\n    from bot import config\n", "common imports bot"),
    ],
)
def test_the_check_sees_a_wrong_edge(tmp_path: Path, layer: str, source: str, expected: str) -> None:
    """The check reads nested and plain imports alike (a lazy import inside a function is an edge too)."""
    tree = ast.parse(source)
    modules = [module.split(".")[0] for _, module in _modules(tree)]
    wrong = [f"{layer} imports {m}" for m in modules if m in PACKAGES and m not in MAY_IMPORT[layer]]
    assert wrong == [expected]


def test_no_script_folder_shadows_a_package() -> None:
    """`python bench/X.py` puts bench/ first on the path: a bench/common.py would stand in for common/."""
    clashes = [
        f"{folder}/{package}.py"
        for folder in ("bench", "tools")
        for package in (*PACKAGES, "tests")
        if (ROOT / folder / f"{package}.py").exists()
    ]
    assert not clashes
