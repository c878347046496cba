"""ADetailer's detector files (YOLOv8 pickles: face_yolov8n.pt, hand_yolov8n.pt, person_yolov8n-seg.pt):
read by the bounded pickle interpreter without ultralytics and without running them, refused by name
when hostile or of a YOLO Easel does not build, run by our own network (the tiny file's set weights
find a bright spot: its box is known to the pixel, through the letterbox and back), and used by the
detail pass for faces and hands — through the runner, the command line and Discord's buttons."""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from bot.checkpoints.inspection import inspect_file
from common.detail import DILATE, MASK_BLUR
from common.detector_file import detector_global, read_detector, serves
from common.errors import CheckpointFileError
from common.protocol import BatchFailed, ComponentUse, DetectorUse, JobDone, JobPart, LoadRequest, RunBatch
from common.safe_pickle import safe_unpickle
from gpu_worker.testing.tiny_detector import NAMES, detection_model, expected_box, make_tiny_detector, save_pickled
from gpu_worker.yolo import DetectorError, detect, load_detector
from tests.a1111_infotext import parse_generation_parameters as parse_infotext
from tests.helpers import in_process_runner


@pytest.fixture(scope="module")
def detectors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("adetailer")
    return {
        "face": make_tiny_detector(folder / "face_yolov8n.pt"),
        "hand": make_tiny_detector(folder / "hand_yolov8n.pt", classes=("hand",)),
        "person": make_tiny_detector(folder / "person_yolov8n-seg.pt", "segment", ("person",)),
    }


def spot(size: tuple[int, int], at: tuple[int, int], side: int = 10) -> Image.Image:
    picture = Image.new("RGB", size, "black")
    ImageDraw.Draw(picture).rectangle((at[0], at[1], at[0] + side - 1, at[1] + side - 1), fill="white")
    return picture


def test_a_detector_file_is_read_as_its_record_without_ultralytics(detectors: dict[str, Path]) -> None:
    face = read_detector(detectors["face"])
    assert (face.task, face.classes, face.reason, face.version) == ("detect", ("face",), "", "8.0.114")
    assert [layer.kind for layer in face.layers[:3]] == ["Conv", "Conv", "C2f"] and face.layers[-1].kind == "Detect"
    assert face.layers[11].settings["f"] == [-1, 6] and face.tensors["model.0.conv.weight"].shape == (8, 3, 3, 3)
    assert face.tensors["model.0.conv.weight"].dtype == "F16"  # as ultralytics saves them: half precision
    person = read_detector(detectors["person"])
    assert person.task == "segment" and person.layers[-1].kind == "Segment" and "model.22.proto.cv1.conv.weight" in person.tensors
    assert [serves(read_detector(p), p.name) for p in detectors.values()] == ["faces", "hands", "persons"]


class _Hostile:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/easel-detector-pwned",))


class _Other:
    """Something named as a layer of another YOLO (YOLO11's C3k2)."""


def _save_with(path: Path, extra: object, kind: tuple[str, str] | None = None) -> Path:
    """The tiny face detector with `extra` beside its model (train_args), or its first layer named `kind`."""
    model = detection_model(("face",))
    names = dict(NAMES) | ({type(model.model[0]): kind} if kind else {})
    return save_pickled({"model": model.half(), "train_args": {"extra": extra}}, path, names)


def test_hostile_and_foreign_detector_files_are_refused_by_name(tmp_path: Path) -> None:
    marker = Path("/tmp/easel-detector-pwned")
    marker.unlink(missing_ok=True)
    with pytest.raises(CheckpointFileError, match=r"unsafe pickle: it asks for posix\.system, which is not on the allow-list; nothing was run"):
        read_detector(_save_with(tmp_path / "face_yolov8n.pt", _Hostile()))
    assert not marker.exists()
    # The same call wrapped as what a detector may name (a torch module's package) is still refused,
    # and a name that is not an identifier never reaches the allowance.
    for module, name in (("builtins", "eval"), ("torch.nn.modules.conv", "os.system"), ("ultralytics.nn", "x y")):
        data = pickle.PROTO + b"\x02" + pickle.GLOBAL + f"{module}\n{name}\n".encode() + b")R."
        with pytest.raises(CheckpointFileError, match="not on the allow-list"):
            safe_unpickle(data, None, detector_global)
    # A detector's classes become inert records even when the pickle calls them: nothing runs.
    inert = safe_unpickle(pickle.PROTO + b"\x02" + pickle.GLOBAL + b"builtins\ngetattr\n" + b"(X\x01\x00\x00\x00aX\x07\x00\x00\x00forwardtR.", None, detector_global)
    assert type(inert).__name__ == "Opaque" and inert.kind == "builtins.getattr"
    newer = read_detector(_save_with(tmp_path / "hand_yolov9c.pt", 1, ("ultralytics.nn.modules.block", "C3k2")))
    assert newer.reason == "its layers include C3k2 (a newer YOLO than v8): Easel runs YOLOv8's"
    with pytest.raises(DetectorError, match=r"the detector hand_yolov9c\.pt cannot be run: its layers include C3k2"):
        load_detector(tmp_path / "hand_yolov9c.pt", "hand_yolov9c.pt")
    (tmp_path / "plain.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointFileError, match="not a PyTorch checkpoint"):
        read_detector(tmp_path / "plain.pt")


@pytest.mark.parametrize(
    ("size", "at", "side", "cell", "ratio", "pad"),
    [
        ((256, 256), (125, 86), 6, (10, 7), 2.5, (0, 0)),  # square: scaled 2.5x, no padding
        ((320, 200), (123, 88), 6, (8, 6), 2.0, (0, 8)),  # wide: 640x400, padded 8 above and below
        ((96, 160), (44, 53), 6, (6, 7), 4.0, (0, 0)),  # tall: 384x640, already a multiple of 32: no padding
        ((100, 60), (52, 23), 4, (11, 5), 6.4, (0, 0)),  # small: scaled up 6.4x to 640x384
    ],
)
def test_the_network_finds_the_spot_where_the_letterbox_puts_it(detectors, size, at, side, cell, ratio, pad) -> None:
    """The spot covers one pixel the coarsest cells read (every 32nd of the letterboxed picture)."""
    network, _ = load_detector(detectors["face"], "face_yolov8n.pt")
    [found] = detect(network, spot(size, at, side), 0.3, "cpu")
    left, top, right, bottom = expected_box(cell, ratio, pad)
    assert found.box == (max(0, int(np.floor(left))), max(0, int(np.floor(top))), min(size[0], int(np.ceil(right))), min(size[1], int(np.ceil(bottom))))
    assert found.score > 0.99 and found.mask is None
    assert detect(network, Image.new("RGB", size, "black"), 0.3, "cpu") == []


def test_a_segmentation_model_gives_the_spot_as_its_mask_inside_its_box(detectors) -> None:
    network, _ = load_detector(detectors["person"], "person_yolov8n-seg.pt")
    [found] = detect(network, spot((256, 256), (123, 83)), 0.3, "cpu")
    mask = np.asarray(found.mask) > 127
    ys, xs = np.nonzero(mask)
    left, top, right, bottom = found.box
    assert left <= xs.min() and xs.max() < right and top <= ys.min() and ys.max() < bottom  # cut to its box
    # The coarse cell of the letterboxed spot (640 px: 32-px cells, 2.5x the picture's), as the prototypes see it.
    assert mask[int(224 / 2.5) + 2 : int(256 / 2.5) - 2, int(320 / 2.5) + 2 : int(352 / 2.5) - 2].all()
    assert mask.mean() < 0.01


@pytest.fixture(scope="module")
def runner_and_events():
    runner, events, _ = in_process_runner()
    return runner, events


def test_the_detail_pass_redraws_what_each_detector_finds_and_only_there(runner_and_events, tiny_dir: Path, detectors, monkeypatch) -> None:
    """The pictures the family draws are replaced by a known one (a bright spot) so that the real
    detectors' boxes are known; the redraws are the family's own inpainting passes."""
    from gpu_worker.families import FAMILIES

    runner, events = runner_and_events
    path = tiny_dir / "tiny-sd1.safetensors"
    load = LoadRequest(str(path), "tiny", "sd1", "sd1", "safetensors", inspect_file(path).pipeline_config, "epsilon", "cd" * 32)
    family, real = FAMILIES["sd1"], FAMILIES["sd1"].draw
    shown = [spot((64, 64), (30, 20), 4)]
    redrawn: list[tuple[bytes, bytes]] = []  # each redraw's picture and mask

    def draw(run, d, callback):
        if run.batch.batch_id.endswith("-detail"):
            redrawn.append((run.batch.init_png, run.batch.mask_png))
            return real(run, d, callback)
        return [shown[0].copy() for _ in d.jobs[0].seeds]

    monkeypatch.setattr(family, "draw", draw)

    def use(target: str, key: str) -> DetectorUse:
        return DetectorUse(target, ComponentUse("detect", detectors[key].name, str(detectors[key]), key[0] * 64))

    def run(**values) -> JobDone:
        events.clear()
        redrawn.clear()
        runner.run(RunBatch.of("b", load, (JobPart("j", "a hand", "", (3,)),), 64, 64, 3, 5.0, "Euler", "Automatic", **values))
        assert not [e.message for e in events if isinstance(e, BatchFailed)]
        [done] = [e for e in events if isinstance(e, JobDone)]
        return done

    def picture(png: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(png)), dtype=np.int16)

    hand_network = load_detector(detectors["hand"], "hand_yolov8n.pt")[0]
    [box] = [f.box for f in detect(hand_network, shown[0], 0.3, "cpu")]
    done = run(detail="hands", detectors=(use("hands", "hand"),))
    assert len(redrawn) == 1 and done.notes == ()
    after, known = picture(done.images[0].png), np.asarray(shown[0], dtype=np.int16)
    reach = DILATE + 3 * MASK_BLUR  # the box grown, then blurred (the overlay keeps the rest exactly)
    outside = np.ones((64, 64), bool)
    outside[max(0, box[1] - reach) : box[3] + reach, max(0, box[0] - reach) : box[2] + reach] = False
    assert np.array_equal(after[outside], known[outside])
    inside = (slice(box[1], box[3]), slice(box[0], box[2]))
    assert np.abs(after[inside] - known[inside]).mean() > 1  # redrawn
    mask = picture(redrawn[0][1])
    grown = np.zeros((64, 64), bool)
    grown[max(0, box[1] - DILATE) : box[3] + DILATE, max(0, box[0] - DILATE) : box[2] + DILATE] = True
    assert (mask[grown] == 255).all() and not mask[~grown].any()  # the box, dilated as ADetailer does
    info = parse_infotext(done.images[0].infotext)[2]
    assert info["ADetailer model"] == "hand_yolov8n.pt" and "ADetailer model 2nd" not in info

    # Both: faces first (ADetailer's first tab), then hands on the picture the face pass left — where
    # the spot both detectors find is redrawn already, so the hand pass finds nothing and says so.
    done = run(detail="both", detectors=(use("faces", "face"), use("hands", "hand")))
    assert len(redrawn) == 1 and np.array_equal(picture(redrawn[0][0]), known) and np.array_equal(picture(redrawn[0][1]), mask)
    assert done.notes == ("The detail pass found no hand to redraw: the picture is as drawn.",)
    info = parse_infotext(done.images[0].infotext)[2]
    assert info["ADetailer model"] == "face_yolov8n.pt" and info["ADetailer model 2nd"] == "hand_yolov8n.pt"
    assert info["ADetailer denoising strength 2nd"] == "0.4"

    shown[0] = Image.new("RGB", (64, 64), "black")  # nothing to find
    nothing = run(detail="hands", detectors=(use("hands", "hand"),))
    assert redrawn == [] and nothing.notes == ("The detail pass found no hand to redraw: the picture is as drawn.",)


def test_a_detector_that_cannot_be_run_fails_the_job_before_drawing(runner_and_events, tiny_dir: Path, tmp_path: Path) -> None:
    runner, events = runner_and_events
    path = tiny_dir / "tiny-sd1.safetensors"
    load = LoadRequest(str(path), "tiny", "sd1", "sd1", "safetensors", inspect_file(path).pipeline_config, "epsilon", "cd" * 32)
    broken = tmp_path / "hand_yolov8n.pt"
    broken.write_bytes(b"PK\x03\x04 not really")
    events.clear()
    use = DetectorUse("hands", ComponentUse("detect", broken.name, str(broken), "ab" * 32))
    runner.run(RunBatch.of("b", load, (JobPart("j", "a hand", "", (3,)),), 64, 64, 3, 5.0, "Euler", "Automatic", detail="hands", detectors=(use,)))
    [failed] = [e for e in events if isinstance(e, BatchFailed)]
    assert failed.message.startswith("the detector hand_yolov8n.pt cannot be read") and not [e for e in events if isinstance(e, JobDone)]


def test_the_command_line_registers_detectors_and_draws_with_them(cli, add_tiny, env: Path, tmp_path: Path) -> None:
    add_tiny("sd1", "tiny.safetensors")
    models = env / "models"
    folder = models / "adetailer"
    folder.mkdir()
    (folder / "face_yolov8s.pt").write_bytes(b"\x80\x04cposix\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.")
    scanned = cli("checkpoints", "scan")
    assert scanned.code == 0 and "face_yolov8s.pt" in scanned.out + scanned.err  # refused by the reader, named
    assert "face_yolov8s" not in cli("detectors", "list").out
    (folder / "face_yolov8s.pt").unlink()
    base = ("generate", "--checkpoint", "tiny", "--prompt", "a hand", "--size", "64x64", "--steps", "3", "--seed", "2")
    refused = cli(*base, "--detail", "both", "--out", str(tmp_path / "refused"))
    assert refused.code != 0 and "ADetailer's hand_yolov8n.pt (Bingsu/adetailer on Hugging Face) in models/adetailer" in refused.err
    made = cli("make-tiny-detector", "--classes", "hand", str(models / "ultralytics" / "bbox" / "hand_yolov8n.pt"))
    assert made.code == 0 and "tiny YOLOv8 detect model of hand" in made.out
    assert cli("checkpoints", "scan").code == 0
    listed = cli("detectors", "list").out
    assert "hand_yolov8n" in listed and "YOLO boxes of hand" in listed
    info = cli("detectors", "info", "hand_yolov8n").out
    assert "Finds:         hands: generate --detail hands (or both)" in info and "saved by ultralytics 8.0.114" in info
    drawn = cli(*base, "--detail", "both", "--out", str(tmp_path / "out"))
    assert drawn.code == 0, drawn.err
    [png] = sorted((tmp_path / "out").glob("*.png"))
    text = Image.open(png).info["parameters"]
    assert "ADetailer model: NudeNet faces" in text and "ADetailer model 2nd: hand_yolov8n.pt" in text


def test_a_layer_record_outside_what_yolo_has_is_refused_by_name(detectors) -> None:
    """The settings a hostile file records are checked before anything is built: sizes, kernels,
    strides, upsampling, where a layer reads from."""
    from dataclasses import replace

    from common.detector_file import Layer
    from gpu_worker.yolo import _sources, build

    conv = Layer("Conv2d", {"in_channels": 3, "out_channels": 8, "kernel_size": (3, 3), "stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "groups": 1}, ("weight",))
    assert isinstance(build(conv), torch.nn.Conv2d)
    for change, said in (
        ({"kernel_size": (99, 99)}, "a kernel_size of (99, 99)"),
        ({"out_channels": 10**6}, "a out_channels of 1000000"),
        ({"stride": (0, 0)}, "a stride of (0, 0)"),
        ({"groups": 3}, "channels do not divide into its groups"),
        ({"padding_mode": "circular"}, "pads in a way YOLO's do not"),
        ({"in_channels": True}, "a in_channels of True"),
    ):
        with pytest.raises(DetectorError, match=re.escape(said)):
            build(replace(conv, settings=conv.settings | change))
    with pytest.raises(DetectorError, match=re.escape("its Upsample is not YOLO's nearest ×2")):
        build(Layer("Upsample", {"scale_factor": 64.0, "mode": "nearest"}, ()))
    with pytest.raises(DetectorError, match="it has a Lambda layer, which Easel does not run"):
        build(Layer("Lambda", {}, ()))
    with pytest.raises(DetectorError, match="its Conv has no conv"):
        build(Layer("Conv", {}, (), {"act": Layer("SiLU", {}, ())}))
    face = read_detector(detectors["face"])
    forward = replace(face, layers=(replace(face.layers[0], settings=face.layers[0].settings | {"f": 5}), *face.layers[1:]))
    with pytest.raises(DetectorError, match=r"its layer 0 reads from 5, which is not an earlier layer"):
        _sources(forward)


async def test_make_this_here_keeps_an_a1111_pictures_hand_pass_only_where_a_hand_detector_is(tmp_path: Path, tiny_dir: Path, detectors) -> None:
    import shutil

    from bot.checkpoints.registry import CheckpointRegistry
    from bot.db import open_database
    from bot.detectors import DetectorRegistry
    from bot.generation.service import GenerationService
    from bot.images.infotext import parse_infotext as read_infotext
    from bot.jobs import Asker, Jobs, Place
    from bot.rules.limits import Limits

    (tmp_path / "models").mkdir()
    shutil.copy(tiny_dir / "tiny-sd1.safetensors", tmp_path / "models" / "tiny.safetensors")
    db = await open_database(tmp_path / "easel.sqlite3")
    try:
        checkpoints = CheckpointRegistry(db, tmp_path / "models")
        await checkpoints.scan()
        registry = DetectorRegistry(db, tmp_path / "models")
        jobs = Jobs(checkpoints, GenerationService(db, [], Limits()), None, detectors=registry)  # plans only: no worker
        text = (
            "a hand\nSteps: 4, Seed: 5, Size: 64x64, Model: tiny, ADetailer model: face_yolov8n.pt, "
            "ADetailer denoising strength: 0.3, ADetailer model 2nd: hand_yolov8n.pt, ADetailer version: 24.11.1"
        )
        [spec] = (await jobs.plan_from_infotext(Asker.host(), Place.command_line(), read_infotext(text))).specs
        assert spec.parameters.detail == "faces" and spec.parameters.detail_strength == 0.3
        assert "its ADetailer hand pass was left out: no hand detector (hand_yolov8n.pt) is installed here" in spec.notes
        assert [d.target for d in spec.detectors] == ["faces"] and spec.detectors[0].detector is None  # the check's faces
        (tmp_path / "models" / "adetailer").mkdir()
        shutil.copy(detectors["hand"], tmp_path / "models" / "adetailer" / "hand_yolov8n.pt")
        await registry.scan()
        [spec] = (await jobs.plan_from_infotext(Asker.host(), Place.command_line(), read_infotext(text))).specs
        assert spec.parameters.detail == "both" and not any("hand pass" in n for n in spec.notes)
        assert [(d.target, d.detector.name if d.detector else None) for d in spec.detectors] == [("faces", None), ("hands", "hand_yolov8n.pt")]
    finally:
        await db.close()


def test_a_segmentation_models_mask_is_grown_by_the_dilation_and_kept_to_its_box() -> None:
    from common.detail import DILATE
    from gpu_worker.detail_pass import region_mask
    from gpu_worker.yolo import Found

    shape = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(shape).ellipse((20, 20, 39, 39), fill=255)  # a round thing found in its box
    ImageDraw.Draw(shape).rectangle((0, 0, 5, 5), fill=255)  # a stray blob outside the box
    mask = np.asarray(region_mask((64, 64), Found((20, 20, 40, 40), 0.9, shape))) > 0
    ys, xs = np.nonzero(mask)
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == (20 - DILATE, 20 - DILATE, 39 + DILATE, 39 + DILATE)
    assert not mask[:10, :10].any()  # kept to the box, grown as ADetailer grows it
    assert not mask[20 - DILATE, 20 - DILATE]  # a corner of the box, far from the round shape
    boxed = np.asarray(region_mask((64, 64), Found((20, 20, 40, 40), 0.9))) > 0
    assert boxed[20 - DILATE : 40 + DILATE, 20 - DILATE : 40 + DILATE].all() and boxed.sum() == (20 + 2 * DILATE) ** 2
