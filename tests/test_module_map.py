"""docs/ARCHITECTURE.md is the one map: it names every module, and nothing it names is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "gpu_worker", "bot", "cogs", "cli")
MAP = ROOT / "docs" / "ARCHITECTURE.md"


def _modules() -> set[str]:
    """Every module by its path; a package's __init__.py only when it holds more than a docstring."""
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            relative = path.relative_to(ROOT).as_posix()
            if path.name == "__init__.py" and not _has_code(path):
                continue
            found.add(relative)
    return found


def _has_code(path: Path) -> bool:
    text = re.sub(r'^(""".*?"""|\'\'\'.*?\'\'\')', "", path.read_text().strip(), flags=re.S)
    return any(line.strip() and not line.startswith("from __future__") for line in text.splitlines())


def _named(text: str) -> set[str]:
    return set(re.findall(r"`((?:" + "|".join(PACKAGES) + r")/[\w/]+\.py)`", text))


def test_the_map_names_every_module() -> None:
    missing = sorted(_modules() - _named(MAP.read_text()))
    assert not missing, "docs/ARCHITECTURE.md does not name: " + ", ".join(missing)


def test_every_module_the_docs_name_exists() -> None:
    stale = {
        f"{doc.relative_to(ROOT)}: {name}"
        for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        for name in _named(doc.read_text())
        if not (ROOT / name).is_file()
    }
    assert not stale, "named but not there: " + ", ".join(sorted(stale))


def test_the_check_sees_a_missing_module() -> None:
    text = "- `bot/jobs.py` — jobs\n- `common/protocol.py`, `cogs/utils/views.py` — more"
    assert _named(text) == {"bot/jobs.py", "common/protocol.py", "cogs/utils/views.py"}
    assert "bot/db.py" not in _named(text)
