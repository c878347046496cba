"""ControlNet preprocessors that run an annotator network (lllyasviel/Annotators' files): HED's soft
edges and the line drawing generator, in their real layouts, through the real runner and the command
line; their maps' arithmetic held to known outputs; the missing file named; a hostile file refused."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.control import ControlUnit
from common.protocol import ComponentUse
from gpu_worker.annotators import HedNetwork, LineartGenerator, load_annotator, run_annotator
from gpu_worker.testing.tiny import make_tiny_checkpoint
from gpu_worker.testing.tiny_annotator import make_tiny_annotator
from gpu_worker.testing.tiny_controlnet import make_tiny_controlnet
from tests.helpers import in_process_runner
from tests.test_controlnet import SIZE, draw, load, picture, use


@pytest.fixture(scope="module")
def annotators(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("annotators")
    return {
        "sd1": make_tiny_checkpoint("sd1", folder / "tiny-sd1.safetensors", seed=0),
        "cn-sd1": make_tiny_controlnet("sd1", folder / "control_tiny_sd15_softedge.safetensors", seed=0),
        "hed": make_tiny_annotator("hed", folder / "ControlNetHED.pth", seed=1),
        "lineart": make_tiny_annotator("lineart", folder / "sk_model.pth", seed=2),
    }


def unit(module: str, **values: object) -> ControlUnit:
    return ControlUnit(**({"image": "ab" * 32, "module": module} | values))  # type: ignore[arg-type]


def map_of(done) -> np.ndarray:
    [shown] = done.maps
    return np.asarray(Image.open(io.BytesIO(shown.png)))


def test_soft_edges_and_line_drawings_are_made_by_their_networks_in_the_runner(annotators) -> None:
    runner, events, _ = in_process_runner()
    runner_and_events = (runner, events)
    checkpoint, model = load(annotators["sd1"], "sd1"), use(annotators["cn-sd1"], "sd1")
    hed = ComponentUse("hed", "ControlNetHED.pth", str(annotators["hed"]), "1" * 64)
    lineart = ComponentUse("lineart", "sk_model.pth", str(annotators["lineart"]), "2" * 64)
    maps = {}
    for module, annotator in (("softedge_hed", hed), ("softedge_hedsafe", hed), ("scribble_hed", hed), ("lineart_realistic", lineart)):
        done = draw(runner_and_events, checkpoint, [unit(module)], [replace(model, annotators=(annotator,))])
        maps[module] = map_of(done)
        assert maps[module].shape == (SIZE, SIZE, 3) and (maps[module][..., 0] == maps[module][..., 2]).all()  # a gray map
        assert f'Module: {module}, Model: ' in done.images[0].infotext
    assert set(np.unique(maps["scribble_hed"])) <= {0, 255}
    assert len(np.unique(maps["softedge_hedsafe"])) <= 3 < len(np.unique(maps["softedge_hed"]))  # safe: three levels
    again = draw(runner_and_events, checkpoint, [unit("softedge_hed")], [replace(model, annotators=(hed,))])
    assert np.array_equal(map_of(again), maps["softedge_hed"])  # the same network, the same map


def constant_network(kind: str, folder: Path, bias: float) -> Path:
    """An annotator whose every weight is 0 and whose last layers' biases are `bias`: its output is
    known without running it."""
    network = HedNetwork() if kind == "hed" else LineartGenerator()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
        if kind == "hed":
            for i in range(1, 6):
                getattr(network, f"block{i}").projection.bias.fill_(bias * i)  # scores b, 2b, … 5b
        else:
            network.model4[1].bias.fill_(bias)
    path = folder / f"{kind}.pth"
    torch.save(network.state_dict(), path)
    return path


def test_the_maps_are_computed_as_the_extension_computes_them(tmp_path: Path) -> None:
    rgb = np.asarray(picture())
    hed = {"hed": load_annotator(constant_network("hed", tmp_path, 1.0), "hed", "hed")}
    # Scores 1 … 5: the sigmoid of their mean, sigmoid(3) = 0.9526 → 242 (the mean of their sigmoids
    # would be 0.9080 → 231).
    assert (run_annotator(hed, "softedge_hed", rgb, "cpu") == 242).all()
    hed = {"hed": load_annotator(constant_network("hed", tmp_path, 0.1), "hed", "hed")}
    # Safe: sigmoid(0.3) = 0.5744, floor(0.5744 × 3) / 2 = 0.5 → 127 (146 unsafe).
    assert (run_annotator(hed, "softedge_hedsafe", rgb, "cpu") == 127).all()
    assert (run_annotator(hed, "softedge_hed", rgb, "cpu") == 146).all()
    lineart = {"lineart": load_annotator(constant_network("lineart", tmp_path, -1.0), "lineart", "lineart")}
    # The generator's sigmoid(-1) = 0.2689 of ink, inverted as the extension does: 255 - 68 = 187.
    assert (run_annotator(lineart, "lineart_realistic", rgb[:50, :40], "cpu") == 255 - int(0.2689414213699951 * 255)).all()
    assert run_annotator(lineart, "lineart_realistic", rgb[:50, :40], "cpu").shape == (50, 40)  # padded to 64, cut back


def test_the_command_line_finds_the_annotator_by_its_name_and_refuses_what_is_missing(cli, models: Path, add_tiny, tmp_path: Path) -> None:
    add_tiny("sd1", "tiny.safetensors")
    make_tiny_controlnet("sd1", models / "ControlNet" / "control_v11p_sd15_lineart.safetensors")
    folder = models / "ControlNetPreprocessor"
    folder.mkdir()
    (folder / "sk_model2.pth").write_bytes(b"\x80\x04cposix\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.")
    scanned = cli("checkpoints", "scan")
    assert scanned.code == 0 and "sk_model2.pth" in scanned.out + scanned.err  # refused by the allow-list reader, named
    assert "sk_model2" not in cli("annotators", "list").out
    picture().save(tmp_path / "square.png")
    base = ("generate", "--checkpoint", "tiny", "--prompt", "a box", "--size", "64x64", "--steps", "3", "--seed", "2")
    missing = cli(*base, "--control", f"{tmp_path / 'square.png'}:lineart_realistic", "--out", str(tmp_path / "refused"))
    assert missing.code != 0 and "the lineart_realistic preprocessor needs sk_model.pth" in missing.err
    assert "in models/ControlNetPreprocessor; it is not installed" in missing.err and not (tmp_path / "refused").exists()
    (folder / "sk_model2.pth").unlink()
    made = cli("make-tiny-annotator", "--kind", "lineart", str(folder / "lineart" / "sk_model.pth"))
    assert made.code == 0 and "random-weight lineart annotator" in made.out
    assert cli("checkpoints", "scan").code == 0
    listed = cli("annotators", "list").out
    assert "sk_model" in listed and "line drawing (lineart_realistic, lineart_coarse)" in listed
    drawn = cli(*base, "--control", f"{tmp_path / 'square.png'}:lineart_realistic", "--out", str(tmp_path / "out"))
    assert drawn.code == 0, drawn.err
    assert "ControlNet 0: lineart_realistic map for control_v11p_sd15_lineart [" in drawn.out
    coarse = cli(*base, "--control", f"{tmp_path / 'square.png'}:lineart_coarse", "--out", str(tmp_path / "refused"))
    assert coarse.code != 0 and "the lineart_coarse preprocessor needs sk_model2.pth" in coarse.err  # the other training
    depth = cli(*base, "--control", f"{tmp_path / 'square.png'}:depth_midas:control_v11p_sd15_lineart", "--out", str(tmp_path / "refused"))
    assert depth.code != 0 and "the depth_midas preprocessor needs dpt_hybrid-midas-501f0c75.pt" in depth.err
    zoe = cli(*base, "--control", f"{tmp_path / 'square.png'}:depth_zoe", "--out", str(tmp_path / "refused"))
    assert zoe.code != 0 and "needs its annotator model (ZoeD_M12_N.pt), which Easel does not run" in zoe.err


def person_maps(people: list[dict[int, tuple[int, int]]], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Part heatmaps (a Gaussian at each joint) and affinity fields (the limb's unit vector along it)
    as the body network would give them for these people."""
    from gpu_worker.openpose import FIELDS, LIMBS

    heatmaps, fields = np.zeros((height, width, 19), np.float32), np.zeros((height, width, 38), np.float32)
    ys, xs = np.mgrid[0:height, 0:width]
    for joints in people:
        for part, (x, y) in joints.items():
            heatmaps[:, :, part - 1] = np.maximum(heatmaps[:, :, part - 1], np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 18.0))
        for (a, b), (fx, fy) in zip(LIMBS, FIELDS, strict=True):
            if a not in joints or b not in joints:
                continue
            (x0, y0), (x1, y1) = joints[a], joints[b]
            direction = np.array([x1 - x0, y1 - y0], float) / np.hypot(x1 - x0, y1 - y0)
            for t in np.linspace(0, 1, 200):
                x, y = round(x0 + t * (x1 - x0)), round(y0 + t * (y1 - y0))
                fields[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3, fx - 19] = direction[0]
                fields[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3, fy - 19] = direction[1]
    return heatmaps, fields


BODY = {1: (40, 30), 2: (40, 60), 3: (15, 62), 4: (8, 95), 5: (5, 125), 6: (65, 62), 7: (72, 95), 8: (75, 125),
        9: (28, 120), 10: (26, 155), 11: (25, 190), 12: (52, 120), 13: (54, 155), 14: (55, 190), 15: (35, 25),
        16: (45, 25), 17: (28, 28), 18: (52, 28)}  # fmt: skip


def test_openpose_joins_each_person_s_parts_and_draws_their_skeletons(tmp_path: Path) -> None:
    from gpu_worker.openpose import assemble, draw_bodies

    height, width = 200, 240
    second = {part: (x + 140, y) for part, (x, y) in BODY.items()}
    people = assemble(*person_maps([BODY, second], height, width))
    found = sorted([[None if p is None else (round(p[0] * width), round(p[1] * height)) for p in person] for person in people])
    assert found == [[BODY[i] for i in range(1, 19)], [second[i] for i in range(1, 19)]]  # every joint, each person
    left = [person for person in people if person[0] is not None and person[0][0] * width < 100]
    canvas = draw_bodies(left, height, width)
    assert tuple(canvas[30, 40]) == (255, 0, 0) and tuple(canvas[60, 40]) == (255, 85, 0)  # nose, neck: their colours
    assert tuple(canvas[61, 28]) == (153, 0, 0)  # the first limb (neck to right shoulder): red dimmed to 60 %
    assert not canvas[5:15, 100:130].any() and not canvas[:, 120:].any()
    # Each person drawn dims those drawn before once more, as the extension draws them.
    both = draw_bodies(people, height, width)
    assert {tuple(both[30, 40]), tuple(both[30, 180])} == {(255, 0, 0), (153, 0, 0)}
    # Fewer than four parts joined are no one; four are someone.
    assert assemble(*person_maps([{1: BODY[1], 2: BODY[2], 15: BODY[15]}], height, width)) == []
    [head] = assemble(*person_maps([{part: BODY[part] for part in (1, 2, 15, 17)}], height, width))
    assert [i + 1 for i, p in enumerate(head) if p is not None] == [1, 2, 15, 17]


def test_the_body_model_is_read_in_its_file_layout_and_runs(tmp_path: Path) -> None:
    from bot.controlnets.annotators import annotator_layout
    from gpu_worker.annotators import BodyPoseNetwork

    network = BodyPoseNetwork()
    shapes = {name: tuple(t.shape) for name, t in network.state_dict().items()}
    assert annotator_layout(shapes) == "openpose_body" and "conv1_1.weight" in shapes and "Mconv7_stage6_L2.bias" in shapes
    assert sum(t.numel() for t in network.state_dict().values()) == 52_311_446  # body_pose_model.pth's count
    made = run_annotator({"openpose_body": network.eval()}, "openpose", np.asarray(picture().resize((72, 56))), "cpu")
    assert made.shape == (56, 72, 3) and made.dtype == np.uint8


def test_the_rules_hold_an_annotator_preprocessor_to_its_file() -> None:
    from bot.generation.checkpoint_ref import CheckpointRef
    from bot.rules.limits import GenerationError, GenerationRequest, Limits, validate
    from common.parameters import Parameters
    from common.protocol import ControlNetUse
    from tests.helpers import png

    sd1 = CheckpointRef("x", "ab" * 32, "/x", "sd1", "SD1.x", "safetensors", "tiny-sd1", "epsilon", True, "", True)
    request = GenerationRequest(Parameters(prompt="a box", control=(unit("softedge_hed"),)), "u")
    model = ControlNetUse("control_v11p_sd15_softedge", "/c", "c" * 64, "0123abcd", "sd1")
    lineart = ComponentUse("lineart", "sk_model.pth", "/a", "a" * 64)
    for wrong in (model, replace(model, annotators=(lineart,))):  # none, or another network's
        with pytest.raises(GenerationError, match=r"the softedge_hed preprocessor needs its annotators \(ControlNetHED\.pth\)"):
            validate(request, sd1, Limits(), controlnets=(wrong,), control_pngs=(png(picture()),))
    hed = ComponentUse("hed", "ControlNetHED.pth", "/h", "h" * 64)
    spec = validate(request, sd1, Limits(), controlnets=(replace(model, annotators=(hed,)),), control_pngs=(png(picture()),))
    assert spec.controlnets[0].annotators == (hed,)


def test_depth_anything_v2_and_v1_are_sized_by_their_files_and_stretched_from_far_to_near(tmp_path: Path) -> None:
    from bot.controlnets.annotators import annotator_layout

    path = make_tiny_annotator("depth_anything_v2", tmp_path / "depth_anything_v2_vits.pth", seed=3)
    state = torch.load(path, weights_only=True)
    assert annotator_layout({k: tuple(v.shape) for k, v in state.items()}) == "depth_anything_v2"
    state["depth_head.scratch.output_conv2.2.bias"].fill_(1.0)  # a depth above 0 everywhere, varying with the picture
    torch.save(state, path)
    network = load_annotator(path, "depth_anything_v2", "depth_anything_v2_vits")
    made = run_annotator({"depth_anything_v2": network}, "depth_anything_v2", np.asarray(picture().resize((40, 50))), "cpu")
    assert made.shape == (50, 40) and made.min() == 0 and made.max() == 255  # the farthest black, the nearest white
    # Twelve or twenty-four blocks (ViT-S, B, L) are run; ViT-G's forty, with another feed-forward, are not.
    shapes = {name: tuple(t.shape) for name, t in state.items()}
    giant = shapes | {f"pretrained.blocks.{i}.norm1.weight": (64,) for i in range(12, 40)}
    assert annotator_layout(shapes) == "depth_anything_v2" and annotator_layout(giant) == ""
    # V1 (depth_anything_vitl14.pth): the same tensors' names, told apart by its file's name; its head
    # reads the last four blocks, not V2's spread: the same weights give another map.
    from bot.controlnets.annotators import examine_annotator

    v1_path = tmp_path / "depth_anything_vits14.pth"
    torch.save(state, v1_path)
    assert examine_annotator(v1_path).layout == "depth_anything" and examine_annotator(path).layout == "depth_anything_v2"
    v1 = load_annotator(v1_path, "depth_anything", "depth_anything_vits14")
    assert v1.taps == (8, 9, 10, 11) and network.taps == (2, 5, 8, 11)
    other = run_annotator({"depth_anything": v1}, "depth_anything", np.asarray(picture().resize((40, 50))), "cpu")
    assert other.shape == (50, 40) and not np.array_equal(other, made)


class BlobHand(torch.nn.Module):
    """Stands in for the hand model's weights: maps (at an eighth of its input, as it gives them)
    with a blob for part 0 at the middle, and for part 5 a strong one at (¼, ¾) and a weak one at (¾, ¼)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = x.shape[2] // 8, x.shape[3] // 8
        ys, xs = torch.meshgrid(torch.arange(rows) / rows, torch.arange(cols) / cols, indexing="ij")
        maps = torch.zeros(1, 22, rows, cols)

        def blob(cx: float, cy: float, height: float) -> torch.Tensor:
            return height * torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / 0.005)

        maps[0, 0] = blob(0.5, 0.5, 1.0)
        maps[0, 5] = blob(0.25, 0.75, 1.0) + blob(0.75, 0.25, 0.4)
        return maps


def test_openpose_finds_hand_and_face_boxes_from_the_body_and_draws_them() -> None:
    from gpu_worker.annotators import CpmNetwork
    from gpu_worker.openpose import Pose, _face_peaks, _hand_peaks, draw_poses, face_box, hand_boxes

    joints: list[tuple[float, float] | None] = [None] * 18
    joints[2], joints[3], joints[4] = (100.0, 100.0), (100.0, 160.0), (100.0, 220.0)  # right shoulder, elbow, wrist
    # Beyond the wrist by a third of the forearm (y 239.8); 1.5 × the longer of the forearm (60) and
    # 0.9 × the upper arm (54): 90 wide; cut at the picture's bottom (250).
    assert hand_boxes(joints, 250, 300) == [(55, 194, 55, False)]  # 250 - 194.8, truncated
    assert hand_boxes(joints, 400, 300) == [(55, 194, 90, False)]
    joints[5], joints[6], joints[7] = (200.0, 100.0), (200.0, 105.0), (200.0, 110.0)  # a left arm too short: no box
    assert [box[3] for box in hand_boxes(joints, 400, 300)] == [False]
    joints[0], joints[14] = (150.0, 60.0), (140.0, 55.0)  # nose, right eye: 3 × 10 around the nose
    assert face_box(joints, 400, 300) == (120, 30, 60)
    joints[14] = (147.0, 58.0)
    assert face_box(joints, 400, 300) is None  # under 20 pixels
    # A hand's points: each map's strongest blob, its peak, at the crop's scale (the maps averaged
    # over four scales at 128 pixels). Part 0 one blob mid-crop; part 5 a strong blob and a weak one.
    crop = np.asarray(picture().resize((48, 48)))[:, :, ::-1].copy()
    peaks = _hand_peaks(BlobHand(), crop, "cpu")
    assert len(peaks) == 21 and all(p is None for i, p in enumerate(peaks) if i not in (0, 5))
    assert peaks[0] is not None and abs(peaks[0][0] - 24) <= 2 and abs(peaks[0][1] - 24) <= 2
    assert peaks[5] is not None and abs(peaks[5][0] - 12) <= 2 and abs(peaks[5][1] - 36) <= 2  # not the weak one's
    # facenet.pth's network, in its file's layout: 71 maps read at 384 pixels, points inside the crop.
    torch.manual_seed(0)
    face = CpmNetwork(71).eval()
    assert {"Mconv7_stage6.weight", "conv6_2_CPM.weight", "conv5_3_CPM.weight"} <= set(face.state_dict())
    assert all(0 <= x < 48 and 0 <= y < 48 for x, y in _face_peaks(face, crop, "cpu"))
    # Drawn as the extension draws them: a hand's bones in a rainbow (its first red), its joints blue;
    # a face's points white.
    hand_points = [(0.1, 0.1), (0.1, 0.5)] + [None] * 19
    canvas = draw_poses([Pose([None] * 18, right_hand=hand_points, face=[(0.8, 0.8)])], 100, 100)
    assert tuple(canvas[30, 10]) == (255, 0, 0) and tuple(canvas[10, 10]) == (0, 0, 255)
    assert tuple(canvas[80, 80]) == (255, 255, 255)


def test_the_registry_tells_the_openpose_models_apart() -> None:
    from bot.controlnets.annotators import annotator_layout
    from gpu_worker.annotators import BodyPoseNetwork, CpmNetwork

    for network, layout in ((BodyPoseNetwork(), "openpose_body"), (CpmNetwork(22), "openpose_hand"), (CpmNetwork(71), "openpose_face")):
        assert annotator_layout({k: tuple(v.shape) for k, v in network.state_dict().items()}) == layout


class SyntheticBody(torch.nn.Module):
    """Stands in for the body network's weights (not its code path): the maps it would give for one
    person at BODY's joints (scaled as the picture is scaled for it), at an eighth of its input."""

    def __init__(self, height: int) -> None:
        super().__init__()
        self.scale = 0.5 * 368 / height / 8

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = x.shape[2] // 8, x.shape[3] // 8
        joints = {part: (px * self.scale * 8, py * self.scale * 8) for part, (px, py) in BIG_BODY.items()}
        heatmaps, fields = person_maps([{p: (round(jx), round(jy)) for p, (jx, jy) in joints.items()}], rows * 8, cols * 8)
        pick = (slice(4, None, 8), slice(4, None, 8))  # an eighth, sampled at each cell's centre
        return (torch.from_numpy(fields[pick].transpose(2, 0, 1).copy())[None], torch.from_numpy(heatmaps[pick].transpose(2, 0, 1).copy())[None])


BIG_BODY = {part: (x * 2 + 40, y * 2 + 20) for part, (x, y) in BODY.items()}


def test_openpose_full_reads_the_face_where_the_body_puts_it(tmp_path: Path) -> None:
    from gpu_worker.annotators import CpmNetwork, run_annotator
    from gpu_worker.openpose import COLOURS, _network_maps, assemble, face_box

    torch.manual_seed(0)
    networks = {"openpose_body": SyntheticBody(440), "openpose_hand": CpmNetwork(22).eval(), "openpose_face": CpmNetwork(71).eval()}
    rgb = np.zeros((440, 240, 3), np.uint8)
    body_only = run_annotator({"openpose_body": networks["openpose_body"]}, "openpose", rgb, "cpu")
    full = run_annotator(networks, "openpose_full", rgb, "cpu")
    nose = BIG_BODY[1]
    assert tuple(body_only[nose[1], nose[0]]) == COLOURS[0]  # the nose where the maps put it, in its colour
    assert body_only.shape == full.shape == (440, 240, 3)
    # The face's box from the nose, eyes and ears the body maps gave; its points drawn white, inside
    # it (no body colour is white).
    white = (full == 255).all(axis=2)
    assert white.any() and not (body_only == 255).all(axis=2).any()
    [person] = assemble(*_network_maps(networks["openpose_body"], rgb[:, :, ::-1], "cpu"))
    x, y, size = face_box([None if p is None else (p[0] * 240, p[1] * 440) for p in person], 440, 240)  # type: ignore[misc]
    ys, xs = np.nonzero(white)
    assert x - 4 <= xs.min() and xs.max() <= x + size + 4 and y - 4 <= ys.min() and ys.max() <= y + size + 4


def test_lineart_anime_runs_the_u_net_at_multiples_of_256_and_inverts_its_line(tmp_path: Path) -> None:
    from bot.controlnets.annotators import examine_annotator
    from gpu_worker.annotators import LineartAnimeGenerator

    # The released netG.pth's layout: pix2pix's U-Net, eight levels from 64 channels.
    full = {k: tuple(v.shape) for k, v in LineartAnimeGenerator().state_dict().items()}
    innermost = "model.model.1" + ".model.3" * 6 + ".model.1.weight"  # the outermost's inner level, six more, its down
    assert len(full) == 32 and full["model.model.0.weight"] == (64, 3, 4, 4) and full["model.model.3.weight"] == (128, 1, 4, 4)
    assert full[innermost] == (512, 512, 4, 4)
    path = make_tiny_annotator("lineart_anime", tmp_path / "netG.pth")
    assert examine_annotator(path).layout == "lineart_anime"
    state = torch.load(path, weights_only=True)
    for tensor in state.values():
        tensor.zero_()
    state["model.model.3.bias"].fill_(0.5)  # the line is tanh(0.5) everywhere: 0.4621 * 127.5 + 127.5 = 186.4
    torch.save(state, path)
    network = load_annotator(path, "lineart_anime", "netG")
    seen = []
    network.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    made = run_annotator({"lineart_anime": network}, "lineart_anime", np.asarray(picture().resize((300, 200))), "cpu")
    assert seen == [(1, 3, 256, 512)]  # scaled up to multiples of 256
    assert made.shape == (200, 300) and (made == 255 - 186).all()  # back to its size, inverted


def test_depth_midas_runs_dpt_hybrid_as_its_file_lays_it_out(tmp_path: Path) -> None:
    from bot.controlnets.annotators import examine_annotator
    from gpu_worker.midas import MidasHybrid, _same_pad, _StdConv

    # The released dpt_hybrid-midas-501f0c75.pt's layout: timm's ResNet-v2 stages (3, 4, 9) under a
    # ViT-B of 24×24 positions, DPT's readout projections and fusion blocks; 123 M parameters.
    full = {k: tuple(v.shape) for k, v in MidasHybrid().state_dict().items()}
    assert full["pretrained.model.patch_embed.backbone.stages.2.blocks.8.conv3.weight"] == (1024, 256, 1, 1)
    assert full["pretrained.model.patch_embed.proj.weight"] == (768, 1024, 1, 1) and full["pretrained.model.pos_embed"] == (1, 577, 768)
    assert full["pretrained.act_postprocess3.0.project.0.weight"] == (768, 1536) and full["pretrained.act_postprocess4.4.weight"] == (768, 768, 3, 3)
    assert full["scratch.layer3_rn.weight"] == (256, 768, 3, 3) and full["scratch.output_conv.4.weight"] == (1, 32, 1, 1)
    assert round(sum(np.prod(s) for s in full.values()) / 1e6) == 123
    # TensorFlow's "same" padding: the odd pixel after; weight standardisation: a filter's scale does not matter.
    assert _same_pad(torch.zeros(1, 1, 64, 64), 7, 2).shape[-2:] == (69, 69) and _same_pad(torch.zeros(1, 1, 64, 64), 3, 2).shape[-1] == 65
    conv = _StdConv(3, 4, 3, 2)
    x = torch.randn(1, 3, 16, 16)
    before = conv(x)
    conv.weight.data *= 7.0
    assert torch.allclose(conv(x), before, atol=1e-5) and before.shape[-2:] == (8, 8)
    path = make_tiny_annotator("midas", tmp_path / "dpt_hybrid-midas-501f0c75.pt")
    assert examine_annotator(path).layout == "midas"
    network = load_annotator(path, "midas", "dpt_hybrid-midas-501f0c75")
    assert network.taps == (4, 5)  # two thirds in and the last, as MiDaS' hooks 8 and 11 of twelve
    made = run_annotator({"midas": network}, "depth_midas", np.asarray(picture().resize((100, 70))), "cpu")
    assert made.shape == (70, 100) and made.dtype == np.uint8 and made.max() > made.min()


def test_pidinet_runs_its_pixel_differences_and_the_extensions_three_maps(tmp_path: Path) -> None:
    from bot.controlnets.annotators import examine_annotator
    from gpu_worker.pidinet import _CLOCKWISE, _RING_INNER, _RING_OUTER, LAYERS, PiDiNet, difference_conv

    # The released table5_pidinet.pth: 60 channels, dilations of 24; 710,149 parameters (2.8 MB).
    full = {k: tuple(v.shape) for k, v in PiDiNet().state_dict().items()}
    assert full["init_block.weight"] == (60, 3, 3, 3) and full["block4_1.shortcut.weight"] == (240, 240, 1, 1)
    assert "block1_4.conv1.weight" not in full and full["block2_4.conv1.weight"] == (120, 1, 3, 3)
    assert sum(np.prod(s) for s in full.values()) == 710_149 and LAYERS[:4] == ("cd", "ad", "rd", "cv")
    # Angular: each ring position less the one before it going clockwise; radial: each 3×3 neighbour
    # put twice as far out (plus) and as far as it was (minus), on its own ray from the centre.
    ring = [0, 1, 2, 5, 8, 7, 6, 3]
    assert all(_CLOCKWISE[p] == ring[ring.index(p) - 1] for p in ring) and _CLOCKWISE[4] == 4
    for k, outer, inner in zip([0, 1, 2, 3, 5, 6, 7, 8], _RING_OUTER, _RING_INNER, strict=True):
        dy, dx = k // 3 - 1, k % 3 - 1
        assert (outer // 5 - 2, outer % 5 - 2) == (2 * dy, 2 * dx) and (inner // 5 - 2, inner % 5 - 2) == (dy, dx)
    flat = torch.full((1, 1, 9, 9), 0.7)
    weight = torch.randn(1, 1, 3, 3)
    for kind in ("cd", "ad", "rd"):  # differences of a flat picture are nothing, away from its border
        assert difference_conv(kind, flat, weight)[0, 0, 2:-2, 2:-2].abs().max() < 1e-6
    assert difference_conv("cv", flat, weight)[0, 0, 4, 4] == pytest.approx(0.7 * weight.sum().item(), rel=1e-5)

    path = make_tiny_annotator("pidinet", tmp_path / "table5_pidinet.pth")
    assert examine_annotator(path).layout == "pidinet"
    network = load_annotator(path, "pidinet", "table5_pidinet")
    rgb = np.asarray(picture().resize((90, 70)))
    soft = run_annotator({"pidinet": network}, "softedge_pidinet", rgb, "cpu")
    safe = run_annotator({"pidinet": network}, "softedge_pidisafe", rgb, "cpu")
    scribble = run_annotator({"pidinet": network}, "scribble_pidinet", rgb, "cpu")
    assert soft.shape == safe.shape == scribble.shape == (70, 90)
    assert set(np.unique(safe)) <= {0, 127, 255} and set(np.unique(scribble)) <= {0, 255}


def test_mlsd_finds_lines_from_centres_and_their_ends(tmp_path: Path) -> None:
    from bot.controlnets.annotators import examine_annotator
    from gpu_worker.mlsd import MlsdLarge, lines_from

    # The released mlsd_large_512_fp32.pth: MobileNetV2 to 96 channels (four inputs), the fusion
    # blocks 15-23; 1.55 M parameters (6.2 MB).
    full = {k: tuple(v.shape) for k, v in MlsdLarge().state_dict().items()}
    assert full["backbone.features.0.0.weight"] == (32, 4, 3, 3) and full["backbone.features.13.conv.2.weight"] == (96, 576, 1, 1)
    assert full["block15.conv1.0.weight"] == (64, 96, 1, 1) and full["block23.conv3.weight"] == (16, 64, 1, 1)
    # A centre at (x 20, y 10) whose ends lie 5 to each side, and a weaker one beside it (not a 5×5
    # maximum); a third centre whose line is too short for the distance threshold.
    maps = torch.full((1, 9, 32, 48), -20.0)
    maps[0, 1:5] = 0.0
    maps[0, 0, 10, 20], maps[0, 0, 10, 21] = 5.0, 4.0
    maps[0, 1:5, 10, 20] = torch.tensor([-5.0, 0.0, 5.0, 0.0])
    maps[0, 0, 25, 40] = 5.0
    maps[0, 1:5, 25, 40] = torch.tensor([0.0, -0.5, 0.0, 0.5])
    assert lines_from(maps, 0.1, 2.0).tolist() == [[15.0, 10.0, 25.0, 10.0]]
    assert len(lines_from(maps, 0.1, 0.1)) == 2 and len(lines_from(maps, 0.999, 0.1)) == 0
    from gpu_worker.mlsd import mlsd_map

    class Fixed(torch.nn.Module):  # the maps above, for a 96×64 picture (they are at half its size)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert x.shape == (1, 4, 64, 96) and torch.allclose(x[0, 3], torch.full((64, 96), 1 / 127.5 - 1))
            return maps

    drawn = mlsd_map(Fixed(), np.zeros((64, 96, 3), np.uint8), "cpu", 0.1, 2.0)
    assert drawn[20, 30:51].min() == 255 and drawn.sum() == 21 * 255  # (30, 20) to (50, 20), one pixel wide
    path = make_tiny_annotator("mlsd", tmp_path / "mlsd_large_512_fp32.pth")
    assert examine_annotator(path).layout == "mlsd"
    network = load_annotator(path, "mlsd", "mlsd_large_512_fp32")
    made = run_annotator({"mlsd": network}, "mlsd", np.asarray(picture().resize((90, 70))), "cpu", (0.1, 0.1))
    assert made.shape == (70, 90) and set(np.unique(made)) <= {0, 255}


def test_every_annotator_layout_is_built_and_labelled() -> None:
    from common.control import ANNOTATOR_LAYOUTS, PREPROCESSORS
    from gpu_worker.annotators import NETWORKS

    assert set(NETWORKS) == set(ANNOTATOR_LAYOUTS)
    assert {layout for p in PREPROCESSORS.values() for layout, _ in p.annotators} == set(ANNOTATOR_LAYOUTS)
