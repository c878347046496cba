"""The picture check: how likely a picture shows exposed nudity, before it is posted anywhere.

NudeNet's detector (a small YOLOv8 model in ONNX, shipped inside the `nudenet` wheel, run by ONNX
Runtime on the CPU) finds body parts with a confidence each; a picture's score is the highest
confidence among the exposed classes below. It runs in the worker (and in the one-shot upscale
process), never in the bot process: every picture a job makes is scored before its result leaves.
Followed: notAI-tech/NudeNet's label set; the classes counted here are the ones its README calls
exposed nudity (breasts, genitalia, buttocks, anus).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

EXPOSED = (
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
)


FACES = ("FACE_FEMALE", "FACE_MALE")  # the detector's face classes: the detail pass's default detector


@dataclass(frozen=True)
class Scores:
    score: float  # 0-1: the highest exposed-class confidence; 0 when none was found
    labels: dict[str, float] = field(default_factory=dict)  # exposed class -> its highest confidence


@functools.cache
def _detector() -> Any:
    """The process's one detector, made on first use (about 0.1 s, 12 MB): ONNX Runtime's sessions
    run from several threads at once (a batch's previews are checked beside its steps), and every
    scorer of the process shares it. Not before: the preloader forks with one thread, and a session
    starts its own."""
    from nudenet import NudeDetector  # its import pulls in OpenCV: only where pictures are checked

    return NudeDetector()


class NudityScorer:
    """About 20-30 ms per picture on one CPU core."""

    def score(self, picture: Image.Image) -> Scores:
        labels: dict[str, float] = {}
        for found in self._detect(picture):
            name, confidence = str(found.get("class", "")), float(found.get("score", 0.0))
            if name in EXPOSED:
                labels[name] = round(max(labels.get(name, 0.0), confidence), 4)
        return Scores(max(labels.values(), default=0.0), labels)

    def faces(self, picture: Image.Image, confidence: float) -> list[tuple[int, int, int, int]]:
        """The faces the detector finds at `confidence` or more, as (left, top, right, bottom) boxes, in
        the order it gives them (the detail pass redraws each: gpu_worker/detail_pass.py)."""
        boxes = []
        for found in self._detect(picture):
            if str(found.get("class", "")) in FACES and float(found.get("score", 0.0)) >= confidence:
                x, y, w, h = (int(v) for v in found["box"])
                boxes.append((max(0, x), max(0, y), min(picture.width, x + w), min(picture.height, y + h)))
        return [box for box in boxes if box[2] > box[0] and box[3] > box[1]]

    def _detect(self, picture: Image.Image) -> list[dict]:
        bgr = np.ascontiguousarray(np.asarray(picture.convert("RGB"))[:, :, ::-1])
        return list(_detector().detect(bgr))
