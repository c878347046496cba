"""The detail pass (ADetailer's): each face the detector finds is redrawn through the family's own
inpainting (Only masked) and pasted back — pixels beyond the face's blurred mask are the picture's
exactly; with no face found the picture is as drawn, and the job says so; hands without a hand detector are refused by name;
the infotext carries ADetailer's keys and "Make this here" reads them back."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.checkpoints.inspection import inspect_file
from common.detail import DILATE, MASK_BLUR, from_infotext
from common.protocol import BatchFailed, JobDone, JobPart, LoadRequest, RunBatch
from gpu_worker.detail_pass import NO_FACE
from tests.a1111_infotext import parse_generation_parameters as parse_infotext
from tests.helpers import in_process_runner

FACE = (20, 20, 40, 44)


@pytest.fixture(scope="module")
def runner_and_events():
    runner, events, _ = in_process_runner()
    return runner, events


def draw(runner_and_events, load: LoadRequest, **values) -> JobDone:
    runner, events = runner_and_events
    events.clear()
    runner.run(RunBatch.of("b", load, (JobPart("j", "a face", "", (3, 4)),), 64, 64, 4, 5.0, "Euler", "Automatic", **values))
    failed = [e.message for e in events if isinstance(e, BatchFailed)]
    assert not failed, failed
    [done] = [e for e in events if isinstance(e, JobDone)]
    return done


def pixels(done: JobDone, index: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(done.images[index].png)), dtype=np.int16)


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_each_face_found_is_redrawn_and_nothing_beyond_its_mask(runner_and_events, tiny_dir: Path, arch: str, monkeypatch) -> None:
    path = tiny_dir / f"tiny-{arch}.safetensors"
    load = LoadRequest(str(path), "tiny", arch, arch, "safetensors", inspect_file(path).pipeline_config, "epsilon", "cd" * 32)
    plain = draw(runner_and_events, load)
    # The real detector finds no face in a tiny random model's picture: the pictures as drawn, said so.
    unfound = draw(runner_and_events, load, detail="faces")
    assert unfound.notes == (NO_FACE,) and all(np.array_equal(pixels(unfound, i), pixels(plain, i)) for i in (0, 1))
    runner, _ = runner_and_events
    asked = []
    monkeypatch.setattr(runner.safety, "faces", lambda picture, confidence: asked.append(confidence) or [FACE])
    fixed = draw(runner_and_events, load, detail="faces", detail_strength=0.5)
    assert asked == [0.3, 0.3] and fixed.notes == ()  # ADetailer's confidence, each picture looked at
    reach = DILATE + 3 * MASK_BLUR  # the box grown, then blurred (the overlay keeps the rest exactly)
    outside = np.ones((64, 64), bool)
    outside[FACE[1] - reach : FACE[3] + reach, FACE[0] - reach : FACE[2] + reach] = False
    for i in (0, 1):
        before, after = pixels(plain, i), pixels(fixed, i)
        assert np.array_equal(after[outside], before[outside])
        face = (slice(FACE[1], FACE[3]), slice(FACE[0], FACE[2]))
        assert np.abs(after[face] - before[face]).mean() > 1  # redrawn
    info = parse_infotext(fixed.images[0].infotext)[2]
    assert info["ADetailer model"] == "NudeNet faces" and info["ADetailer denoising strength"] == "0.5"
    assert from_infotext(info) == {"detail": "faces", "detail_strength": 0.5}
    assert from_infotext({"ADetailer model": "person_yolov8n-seg.pt"}) == {}  # a pass Easel does not run is left out
    assert from_infotext({"ADetailer model": "face_yolov8n.pt", "ADetailer model 2nd": "hand_yolov8s.pt"})["detail"] == "both"


def test_the_rules_take_faces_and_refuse_hands_without_a_hand_detector_by_name() -> None:
    from bot.rules.limits import GenerationRequest, Limits, validate
    from common.errors import EaselError
    from tests.helpers import checkpoint_ref

    def valid(**values):
        return validate(GenerationRequest.of(prompt="a face", requester_id="u", **values), checkpoint_ref(), Limits())

    assert valid(detail="Faces").parameters.detail == "faces" and valid(detail="none").parameters.detail == ""
    hands = "the detail pass finds hands with a hand detector: ADetailer's hand_yolov8n.pt (Bingsu/adetailer on Hugging Face) in models/adetailer; none is installed"
    for target, said in (("hands", hands), ("both", hands), ("eyes", "the detail pass takes faces, hands or both, not 'eyes'")):
        with pytest.raises(EaselError, match=said.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
            valid(detail=target)
    with pytest.raises(EaselError, match=r"above 0 up to 1, not 1\.5"):
        valid(detail="faces", detail_strength=1.5)


def test_the_command_line_asks_for_it_by_name(cli, add_tiny, tmp_path: Path) -> None:
    add_tiny("sd1", "tiny.safetensors")
    assert cli("checkpoints", "scan").code == 0
    refused = cli("generate", "--checkpoint", "tiny", "--prompt", "a face", "--detail", "hands", "--out", str(tmp_path / "out"))
    assert refused.code != 0 and "hand_yolov8n.pt (Bingsu/adetailer on Hugging Face) in models/adetailer; none is installed" in refused.err
    assert not (tmp_path / "out").exists()
    strong = cli("generate", "--checkpoint", "tiny", "--prompt", "a face", "--detail", "faces", "--detail-strength", "0", "--out", str(tmp_path / "out"))
    assert strong.code != 0 and "denoising strength is above 0 up to 1, not 0" in strong.err


def test_a_detail_pass_that_runs_out_of_memory_is_drawn_again(runner_and_events, tiny_dir: Path, monkeypatch) -> None:
    """As every pass of a job: the runner retries it with its memory savers on."""
    import torch

    from gpu_worker.families import FAMILIES

    path = tiny_dir / "tiny-sd1.safetensors"
    load = LoadRequest(str(path), "tiny", "sd1", "sd1", "safetensors", inspect_file(path).pipeline_config, "epsilon", "cd" * 32)
    runner, _ = runner_and_events
    monkeypatch.setattr(runner.safety, "faces", lambda picture, confidence: [FACE])
    family, failed = FAMILIES["sd1"], []
    real = family.draw

    def once(run, draw, callback):
        if run.batch.batch_id.endswith("-detail") and not failed:
            failed.append(run.batch.batch_id)
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(run, draw, callback)

    monkeypatch.setattr(family, "draw", once)
    retried = draw(runner_and_events, load, detail="faces")
    assert failed == ["b-detail"] and len(retried.images) == 2
