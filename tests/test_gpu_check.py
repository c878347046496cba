"""bench/gpu_check.py, the GPU acceptance script, kept working on a CPU: one family, two of its
checks, as `--cpu --quick` runs them (the whole run takes under a minute: `python bench/gpu_check.py --cpu --quick`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bench.harness
from bench import gpu_check


def test_the_quick_run_checks_a_family_and_writes_its_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench.harness, "RESULTS", tmp_path)
    assert gpu_check.main(["--cpu", "--quick", "--families", "sd1", "--paths", "txt2img,oom"]) == 0  # oom: its own check
    [written] = tmp_path.glob("gpu_check-*.json")
    results = json.loads(written.read_text())
    checks = results["families"]["sd1"]
    assert results["device"] == "cpu" and results["failures"] == []
    assert checks["txt2img"]["finite"] and checks["txt2img"]["not_black"] and checks["txt2img"]["s_per_step_vs_bare"] > 0
    assert checks["out of memory once"] == {"recovered": True, "calls": 3, "next_job_ok": True}


def test_a_failed_check_is_a_failure() -> None:
    results = {"families": {"sdxl": {"txt2img": {"ok": True, "finite": False, "not_black": False, "blame_easel": True}}}}
    assert gpu_check.failures(results) == ["sdxl txt2img: black or NaN where the bare call was not"]
