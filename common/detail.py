"""The detail pass, as the ADetailer extension (Bing-su/adetailer) runs it: after the picture, each
face found is redrawn at the model's size (inpainting, Only masked, its padding) and pasted back
with a blurred mask — the face a picture drew too small to draw well.

Faces are found by the picture check's detector (NudeNet's, which reports faces beside what it
checks): no download. Hands need a hand detector (ADetailer's hand_yolov8n.pt), which Easel does not
run yet: asked for, they are refused by name. The infotext carries ADetailer's own keys.
"""

from __future__ import annotations

from common.errors import EaselError

TARGETS = ("faces", "hands", "both")
DETECTOR = "NudeNet faces"  # what the infotext's "ADetailer model" names for ours
# ADetailer's defaults (its args.py): confidence 0.3, dilate 4, mask blur 4, denoising 0.4, only
# masked with 32 px of padding.
CONFIDENCE = 0.3
DILATE = 4
MASK_BLUR = 4
PADDING = 32
VERSION = "Easel detail pass"


def check_target(target: str) -> str:
    """"" (none) or faces; EaselError naming what hands would need."""
    wanted = target.strip().lower()
    if wanted in ("", "none"):
        return ""
    if wanted == "faces":
        return "faces"
    if wanted in ("hands", "both"):
        raise EaselError(
            "the detail pass finds faces; hands need a hand detector (ADetailer's hand_yolov8n.pt), which Easel does not run yet"
        )
    raise EaselError(f"the detail pass takes faces, not {target!r}")


def infotext_pairs(target: str, strength: float) -> dict[str, str]:
    """ADetailer's keys for one pass (its `ADetailer …` extra generation parameters)."""
    if not target:
        return {}
    return {
        "ADetailer model": DETECTOR,
        "ADetailer confidence": f"{CONFIDENCE:g}",
        "ADetailer dilate erode": str(DILATE),
        "ADetailer mask blur": str(MASK_BLUR),
        "ADetailer denoising strength": f"{strength:g}",
        "ADetailer inpaint only masked": "True",
        "ADetailer inpaint padding": str(PADDING),
        "ADetailer version": VERSION,
    }


def from_infotext(params: dict[str, str]) -> dict[str, object]:
    """The pass an infotext describes, as parameters: a face model ("face_yolov8n.pt", ours) gives the
    faces pass at its denoising strength; others (hands, persons) are left out."""
    model = params.get("ADetailer model", "").lower()
    if "face" not in model:
        return {}
    try:
        strength = float(params.get("ADetailer denoising strength", "0.4"))
    except ValueError:
        strength = 0.4
    return {"detail": "faces", "detail_strength": strength}
