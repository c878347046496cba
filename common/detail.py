"""The detail pass, as the ADetailer extension (Bing-su/adetailer) runs it: after the picture, each
face (or hand) found is redrawn at the model's size (inpainting, Only masked, its padding) and pasted
back with a blurred mask — the face a picture drew too small to draw well.

Faces are found by ADetailer's face detector when one is installed (face_yolov8n.pt in
models/adetailer: bot/detectors.py, run by gpu_worker/yolo.py), else by the picture check's detector
(NudeNet's, which reports faces beside what it checks): no download. Hands need a hand detector
(hand_yolov8n.pt); asked for without one, they are refused by name. "both" runs faces, then hands, as
ADetailer's first and second tabs. The infotext carries ADetailer's own keys, the second pass's with
its " 2nd" suffix.
"""

from __future__ import annotations

from common.errors import EaselError

TARGETS = ("faces", "hands", "both")
DETECTOR = "NudeNet faces"  # what the infotext's "ADetailer model" names for the picture check's detector
HAND_DETECTOR = "hand_yolov8n.pt"  # ADetailer's hand model: what a refusal names
# ADetailer's defaults (its args.py): confidence 0.3, dilate 4, mask blur 4, denoising 0.4, only
# masked with 32 px of padding.
CONFIDENCE = 0.3
DILATE = 4
MASK_BLUR = 4
PADDING = 32
VERSION = "Easel detail pass"
_ORDINALS = ("", " 2nd")  # ADetailer's key suffix per tab (its ui.py `suffix`)


def check_target(target: str) -> str:
    """"" (none), faces, hands or both; EaselError for anything else."""
    wanted = target.strip().lower()
    if wanted in ("", "none"):
        return ""
    if wanted in TARGETS:
        return wanted
    raise EaselError(f"the detail pass takes faces, hands or both, not {target!r}")


def infotext_pairs(target: str, strength: float, detectors: tuple[str, ...] = ()) -> dict[str, str]:
    """ADetailer's keys for each pass (its `ADetailer …` extra generation parameters); `detectors`
    names each pass's model as ADetailer writes it (its file name), in order."""
    if not target:
        return {}
    names = detectors or ((DETECTOR,) if target == "faces" else ())
    pairs: dict[str, str] = {}
    for suffix, name in zip(_ORDINALS, names, strict=False):
        pairs |= {
            f"ADetailer model{suffix}": name,
            f"ADetailer confidence{suffix}": f"{CONFIDENCE:g}",
            f"ADetailer dilate erode{suffix}": str(DILATE),
            f"ADetailer mask blur{suffix}": str(MASK_BLUR),
            f"ADetailer denoising strength{suffix}": f"{strength:g}",
            f"ADetailer inpaint only masked{suffix}": "True",
            f"ADetailer inpaint padding{suffix}": str(PADDING),
        }
    return pairs | {"ADetailer version": VERSION}


def from_infotext(params: dict[str, str]) -> dict[str, object]:
    """The pass an infotext describes, as parameters: its face and hand models (face_yolov8n.pt,
    hand_yolov8s.pt, ours) give faces, hands or both at the first pass's denoising strength; others
    (persons, clothes) are left out."""
    found = []
    for suffix in _ORDINALS:
        model = params.get(f"ADetailer model{suffix}", "").lower()
        found += [target for word, target in (("face", "faces"), ("hand", "hands")) if word in model and target not in found]
    if not found:
        return {}
    try:
        strength = float(params.get("ADetailer denoising strength", "0.4"))
    except ValueError:
        strength = 0.4
    return {"detail": "both" if len(found) == 2 else found[0], "detail_strength": strength}
