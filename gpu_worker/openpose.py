"""The `openpose` preprocessor's map, as the A1111 extension makes it (annotator/openpose: CMU's
OpenPose body model as ported to PyTorch): the body network's part heatmaps and part affinity
fields at one scale, each body part's peaks, limbs joined where the field between two peaks points
along them, people assembled limb by limb, and each person's skeleton drawn on black in OpenPose's
colours. The network is gpu_worker/annotators.BodyPoseNetwork; this module is numpy and OpenCV.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
from scipy.ndimage import gaussian_filter

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

Keypoints = list[tuple[float, float] | None]  # per part, x and y as shares of the width and height


def pose_map(network: torch.nn.Module, rgb: np.ndarray, device: torch.device | str) -> np.ndarray:
    """The skeletons of the people in `rgb` (H×W×3 uint8), drawn on black at its size."""
    height, width = rgb.shape[:2]
    heatmaps, fields = _network_maps(network, rgb[:, :, ::-1], device)
    people = assemble(heatmaps, fields)
    return draw_bodies(people, height, width)


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
    """OpenPose's drawing: each limb an ellipse in its colour, the limbs dimmed to 60 %, each joint a
    dot in its part's colour; RGB on black."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for keypoints in people:
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
    return canvas
