"""The `openpose` preprocessors' maps, as the A1111 extension makes them (annotator/openpose: CMU's
OpenPose models as ported to PyTorch): the body network's part heatmaps and part affinity fields at
one scale, each body part's peaks, limbs joined where the field between two peaks points along them,
people assembled limb by limb, and each person's skeleton drawn on black in OpenPose's colours; with
`openpose_hand`, `openpose_face` and `openpose_full`, each person's hands and face found in boxes set
from their body's joints and drawn too. The networks are gpu_worker/annotators.py's; this module is
numpy, SciPy and OpenCV.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy.ndimage import gaussian_filter, label

BOX_SIZE, SCALE, STRIDE, PAD_VALUE = 368, 0.5, 8, 128
PEAK_THRESHOLD, FIELD_THRESHOLD, SAMPLES = 0.1, 0.05, 10
PARTS = 18
# Limbs as pairs of parts (1-based, OpenPose's COCO order), and each limb's two channels of the
# affinity fields (19-based, as the port numbers them).
LIMBS = [(2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13),
         (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18)]  # fmt: skip
FIELDS = [(31, 32), (39, 40), (33, 34), (35, 36), (41, 42), (43, 44), (19, 20), (21, 22), (23, 24), (25, 26),
          (27, 28), (29, 30), (47, 48), (49, 50), (53, 54), (51, 52), (55, 56), (37, 38), (45, 46)]  # fmt: skip
COLOURS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]  # fmt: skip
STICK_WIDTH = 4

HAND_SCALES, HAND_SIZE, HAND_THRESHOLD = (0.5, 1.0, 1.5, 2.0), 128, 0.05
HAND_EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20)]  # fmt: skip
FACE_SIZE, FACE_THRESHOLD = 384, 0.05
EPS = 0.01

Keypoints = list[tuple[float, float] | None]  # per part, x and y as shares of the width and height


@dataclass
class Pose:
    body: Keypoints
    left_hand: Keypoints | None = None
    right_hand: Keypoints | None = None
    face: Keypoints | None = None


def pose_map(networks: dict[str, torch.nn.Module], rgb: np.ndarray, device: torch.device | str) -> np.ndarray:
    """The skeletons of the people in `rgb` (H×W×3 uint8), drawn on black at its size; their hands
    and faces too when `networks` has those models."""
    height, width = rgb.shape[:2]
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    heatmaps, fields = _network_maps(networks["openpose_body"], bgr, device)
    poses = [Pose(body) for body in assemble(heatmaps, fields)]
    for pose in poses:
        joints = [None if p is None else (p[0] * width, p[1] * height) for p in pose.body]
        if "openpose_hand" in networks:
            for x, y, size, is_left in hand_boxes(joints, height, width):
                found = _normalised(_hand_peaks(networks["openpose_hand"], bgr[y : y + size, x : x + size], device), x, y, width, height)
                if is_left:
                    pose.left_hand = found
                else:
                    pose.right_hand = found
        if "openpose_face" in networks:
            box = face_box(joints, height, width)
            if box is not None:
                x, y, size = box
                pose.face = _normalised(_face_peaks(networks["openpose_face"], bgr[y : y + size, x : x + size], device), x, y, width, height)
    return draw_poses(poses, height, width)


def _resize_by(x: np.ndarray, factor: float) -> np.ndarray:
    height, width = x.shape[:2]
    return _resize_to(x, int(height * factor), int(width * factor))  # truncated, as the port does


def _resize_to(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """The port's resize: area averaging to shrink, Lanczos to grow, channel by channel."""
    grow = (height + width) >= (x.shape[0] + x.shape[1])
    interpolation = cv2.INTER_LANCZOS4 if grow else cv2.INTER_AREA
    if x.ndim == 3 and x.shape[2] not in (1, 3):
        return np.stack([cv2.resize(x[:, :, c], (width, height), interpolation=interpolation) for c in range(x.shape[2])], axis=2)
    return cv2.resize(x, (width, height), interpolation=interpolation)


@torch.inference_mode()
def _network_maps(network: torch.nn.Module, bgr: np.ndarray, device: torch.device | str) -> tuple[np.ndarray, np.ndarray]:
    """Part heatmaps (H×W×19) and affinity fields (H×W×38) at the picture's size."""
    height, width = bgr.shape[:2]
    scaled = _resize_by(np.ascontiguousarray(bgr), SCALE * BOX_SIZE / height)
    down, right = -scaled.shape[0] % STRIDE, -scaled.shape[1] % STRIDE
    padded = np.pad(scaled, ((0, down), (0, right), (0, 0)), constant_values=PAD_VALUE)
    data = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32) / 256 - 0.5)
    network.to(device)
    try:
        fields, heatmaps = (t[0].float().cpu().numpy().transpose(1, 2, 0) for t in network(data.to(device)))
    finally:
        network.to("cpu")
    out = []
    for maps in (heatmaps, fields):
        maps = _resize_by(maps, STRIDE)[: padded.shape[0] - down, : padded.shape[1] - right]
        out.append(_resize_to(maps, height, width))
    return out[0], out[1]


def find_peaks(heatmaps: np.ndarray) -> list[list[tuple[int, int, float, int]]]:
    """Per part, its peaks: (x, y, score, id), ids counting across parts."""
    peaks, counter = [], 0
    for part in range(PARTS):
        original = heatmaps[:, :, part]
        smooth = gaussian_filter(original, sigma=3)
        up, down, left, right = (np.zeros_like(smooth) for _ in range(4))
        up[1:, :], down[:-1, :], left[:, 1:], right[:, :-1] = smooth[:-1, :], smooth[1:, :], smooth[:, :-1], smooth[:, 1:]
        binary = (smooth >= up) & (smooth >= down) & (smooth >= left) & (smooth >= right) & (smooth > PEAK_THRESHOLD)
        ys, xs = np.nonzero(binary)
        found = [(int(x), int(y), float(original[y, x]), counter + i) for i, (x, y) in enumerate(zip(xs, ys, strict=True))]
        peaks.append(found)
        counter += len(found)
    return peaks


def _connections(peaks: list, fields: np.ndarray, height: int) -> tuple[list[np.ndarray | None], set[int]]:
    """Per limb, the peak pairs it joins: (id A, id B, score, index A, index B)."""
    joined: list[np.ndarray | None] = []
    missing = set()
    for k, ((a, b), (fx, fy)) in enumerate(zip(LIMBS, FIELDS, strict=True)):
        field = fields[:, :, [fx - 19, fy - 19]]
        cand_a, cand_b = peaks[a - 1], peaks[b - 1]
        if not cand_a or not cand_b:
            missing.add(k)
            joined.append(None)
            continue
        candidates = []
        for i, pa in enumerate(cand_a):
            for j, pb in enumerate(cand_b):
                vec = np.subtract(pb[:2], pa[:2]).astype(np.float64)
                norm = max(0.001, math.sqrt(vec[0] ** 2 + vec[1] ** 2))
                vec /= norm
                xs = np.linspace(pa[0], pb[0], num=SAMPLES)
                ys = np.linspace(pa[1], pb[1], num=SAMPLES)
                along = np.array([field[round(float(y)), round(float(x))] for x, y in zip(xs, ys, strict=True)])
                scores = along[:, 0] * vec[0] + along[:, 1] * vec[1]
                with_prior = scores.sum() / len(scores) + min(0.5 * height / norm - 1, 0)
                if np.count_nonzero(scores > FIELD_THRESHOLD) > 0.8 * len(scores) and with_prior > 0:
                    candidates.append((i, j, with_prior))
        candidates.sort(key=lambda c: c[2], reverse=True)
        rows: list[list[float]] = []
        for i, j, score in candidates:
            if all(i != r[3] for r in rows) and all(j != r[4] for r in rows):
                rows.append([cand_a[i][3], cand_b[j][3], score, i, j])
                if len(rows) >= min(len(cand_a), len(cand_b)):
                    break
        joined.append(np.array(rows, dtype=np.float64).reshape(-1, 5))
    return joined, missing


def assemble(heatmaps: np.ndarray, fields: np.ndarray) -> list[Keypoints]:
    """The people: each a keypoint per part (None where not found), as shares of the size."""
    height, width = heatmaps.shape[:2]
    peaks = find_peaks(heatmaps)
    joined, missing = _connections(peaks, fields, height)
    candidate = np.array([p for part in peaks for p in part], dtype=np.float64).reshape(-1, 4)
    people = -1 * np.ones((0, 20))  # per person: 18 peak ids, the total score, the count of parts
    for k, (a, b) in enumerate(LIMBS):
        if k in missing:
            continue
        rows = joined[k]
        assert rows is not None
        index_a, index_b = a - 1, b - 1
        for row in rows:
            part_a, part_b, score = row[0], row[1], row[2]
            found = [j for j in range(len(people)) if people[j][index_a] == part_a or people[j][index_b] == part_b][:2]
            if len(found) == 1:
                person = people[found[0]]
                if person[index_b] != part_b:
                    person[index_b] = part_b
                    person[-1] += 1
                    person[-2] += candidate[int(part_b), 2] + score
            elif len(found) == 2:
                first, second = found
                shared = ((people[first] >= 0).astype(int) + (people[second] >= 0).astype(int))[:-2]
                if not np.any(shared == 2):  # two halves of one person: merged
                    people[first][:-2] += people[second][:-2] + 1
                    people[first][-2:] += people[second][-2:]
                    people[first][-2] += score
                    people = np.delete(people, second, 0)
                else:
                    people[first][index_b] = part_b
                    people[first][-1] += 1
                    people[first][-2] += candidate[int(part_b), 2] + score
            elif k < 17:
                person = -1 * np.ones(20)
                person[index_a], person[index_b] = part_a, part_b
                person[-1] = 2
                person[-2] = candidate[[int(part_a), int(part_b)], 2].sum() + score
                people = np.vstack([people, person])
    kept = [p for p in people if p[-1] >= 4 and p[-2] / p[-1] >= 0.4]
    return [
        [None if i < 0 else (candidate[int(i), 0] / width, candidate[int(i), 1] / height) for i in person[:PARTS]]
        for person in kept
    ]


def draw_bodies(people: list[Keypoints], height: int, width: int) -> np.ndarray:
    return draw_poses([Pose(body) for body in people], height, width)


def draw_poses(poses: list[Pose], height: int, width: int) -> np.ndarray:
    """OpenPose's drawing, person by person: each limb an ellipse in its colour, all drawn so far
    dimmed to 60 %, each joint a dot in its part's colour; then each hand's bones in a rainbow with
    blue joints, and the face's points in white. RGB on black."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for pose in poses:
        keypoints = pose.body
        for (a, b), colour in zip(LIMBS[:17], COLOURS, strict=False):
            p, q = keypoints[a - 1], keypoints[b - 1]
            if p is None or q is None:
                continue
            xs, ys = np.array([p[0], q[0]]) * width, np.array([p[1], q[1]]) * height
            length = math.hypot(xs[0] - xs[1], ys[0] - ys[1])
            angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
            polygon = cv2.ellipse2Poly((int(xs.mean()), int(ys.mean())), (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, colour)
        canvas = (canvas * 0.6).astype(np.uint8)
        for point, colour in zip(keypoints, COLOURS, strict=False):
            if point is not None:
                cv2.circle(canvas, (int(point[0] * width), int(point[1] * height)), 4, colour, thickness=-1)
        for hand in (pose.left_hand, pose.right_hand):
            _draw_hand(canvas, hand, height, width)
        for point in pose.face or ():
            if point is not None and int(point[0] * width) > EPS and int(point[1] * height) > EPS:
                cv2.circle(canvas, (int(point[0] * width), int(point[1] * height)), 3, (255, 255, 255), thickness=-1)
    return canvas


def _draw_hand(canvas: np.ndarray, hand: Keypoints | None, height: int, width: int) -> None:
    if not hand:
        return
    pixels = [None if p is None else (int(p[0] * width), int(p[1] * height)) for p in hand]
    for i, (a, b) in enumerate(HAND_EDGES):
        p, q = pixels[a], pixels[b]
        if p is None or q is None or min(*p, *q) <= EPS:
            continue
        colour = tuple(round(c * 255) for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0))
        cv2.line(canvas, p, q, colour, thickness=2)
    for point in pixels:
        if point is not None and min(point) > EPS:
            cv2.circle(canvas, point, 4, (0, 0, 255), thickness=-1)


# --- hands and faces: boxes from the body's joints, peaks in them (the port's util.py, hand.py, face.py)


def hand_boxes(joints: list[tuple[float, float] | None], height: int, width: int) -> list[tuple[int, int, int, bool]]:
    """(x, y, size, is_left) of each hand's square, from its wrist, elbow and shoulder (in pixels):
    beyond the wrist by a third of the forearm, 1.5 times the longer of the forearm and 0.9 of the
    upper arm wide; none under 20 pixels."""
    boxes = []
    for shoulder, elbow, wrist, is_left in ((5, 6, 7, True), (2, 3, 4, False)):
        s, e, w = joints[shoulder], joints[elbow], joints[wrist]
        if s is None or e is None or w is None:
            continue
        x, y = w[0] + 0.33 * (w[0] - e[0]), w[1] + 0.33 * (w[1] - e[1])
        size = 1.5 * max(math.dist(w, e), 0.9 * math.dist(e, s))
        x, y = max(x - size / 2, 0), max(y - size / 2, 0)
        size = min(width - x if x + size > width else size, height - y if y + size > height else size)
        if size >= 20:
            boxes.append((int(x), int(y), int(size), is_left))
    return boxes


def face_box(joints: list[tuple[float, float] | None], height: int, width: int) -> tuple[int, int, int] | None:
    """(x, y, size) of the face's square around the nose, from the eyes (three times their distance)
    and ears (one and a half times); none under 20 pixels."""
    nose = joints[0]
    if nose is None or all(joints[i] is None for i in (14, 15, 16, 17)):
        return None
    reach = 0.0
    for part, factor in ((14, 3.0), (15, 3.0), (16, 1.5), (17, 1.5)):
        point = joints[part]
        if point is not None:
            reach = max(reach, max(abs(nose[0] - point[0]), abs(nose[1] - point[1])) * factor)
    x, y = max(nose[0] - reach, 0), max(nose[1] - reach, 0)
    size = min(width - x if x + reach > width else reach * 2, height - y if y + reach > height else reach * 2)
    return (int(x), int(y), int(size)) if size >= 20 else None


@torch.inference_mode()
def _hand_peaks(network: torch.nn.Module, crop: np.ndarray, device: torch.device | str) -> list[tuple[int, int] | None]:
    """Each of the 21 hand keypoints in the crop (pixels), or None: the network at four scales,
    averaged at 128 pixels; a keypoint is the peak of the strongest connected blob above 0.05."""
    height, width = crop.shape[:2]
    blurred = cv2.GaussianBlur(crop, (0, 0), 0.8)
    average = np.zeros((HAND_SIZE, HAND_SIZE, 22))
    network.to(device)
    try:
        for scale in HAND_SCALES:
            side = int(scale * BOX_SIZE)
            scaled = _resize_to(blurred, side, side)
            down, right = -scaled.shape[0] % STRIDE, -scaled.shape[1] % STRIDE
            padded = np.pad(scaled, ((0, down), (0, right), (0, 0)), constant_values=PAD_VALUE)
            data = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32) / 256 - 0.5)
            maps = network(data.to(device))[0].float().cpu().numpy().transpose(1, 2, 0)
            maps = _resize_by(maps, STRIDE)[: padded.shape[0] - down, : padded.shape[1] - right]
            average += _resize_to(maps, HAND_SIZE, HAND_SIZE) / len(HAND_SCALES)
    finally:
        network.to("cpu")
    peaks: list[tuple[int, int] | None] = []
    for part in range(21):
        original = average[:, :, part].copy()
        binary = gaussian_filter(original, sigma=3) > HAND_THRESHOLD
        if not binary.any():
            peaks.append(None)
            continue
        labels, count = label(binary, structure=np.ones((3, 3)))
        strongest = 1 + int(np.argmax([original[labels == i].sum() for i in range(1, count + 1)]))
        original[labels != strongest] = 0
        y, x = np.unravel_index(np.argmax(original), original.shape)
        peaks.append((int(x * width / HAND_SIZE), int(y * height / HAND_SIZE)))
    return peaks


@torch.inference_mode()
def _face_peaks(network: torch.nn.Module, crop: np.ndarray, device: torch.device | str) -> list[tuple[int, int] | None]:
    """Each face point found in the crop (pixels): the network at 384 pixels, its last stage's maps
    brought back to the crop's size, each map's strongest point above 0.05."""
    height, width = crop.shape[:2]
    data = torch.from_numpy(_resize_to(crop, FACE_SIZE, FACE_SIZE).astype(np.float32)).permute(2, 0, 1)[None] / 256.0 - 0.5
    network.to(device)
    try:
        maps = network(data.to(device)).float()
    finally:
        network.to("cpu")
    maps = torch.nn.functional.interpolate(maps.cpu(), (height, width), mode="bilinear", align_corners=True)[0].numpy()
    peaks: list[tuple[int, int] | None] = []
    for part in maps:
        if (part > FACE_THRESHOLD).any():
            y, x = np.unravel_index(np.argmax(np.where(part > FACE_THRESHOLD, part, -np.inf)), part.shape)
            peaks.append((int(x), int(y)))
    return peaks


def _normalised(peaks: list[tuple[int, int] | None], x: int, y: int, width: int, height: int) -> Keypoints:
    """A crop's peaks as shares of the whole picture (a point at the crop's edge 0 counts as none, as
    the port marks it)."""
    out: Keypoints = []
    for peak in peaks:
        if peak is None:
            out.append(None)
            continue
        px = -1 if peak[0] < 1e-6 else peak[0] + x
        py = -1 if peak[1] < 1e-6 else peak[1] + y
        out.append((px / width, py / height))
    return out
