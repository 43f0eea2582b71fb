"""The simulated catalog: prices, output shapes and catalog entries of the local models.

Input schemas come from schemas/models (batchrun.models); prices and output shapes are
simulator settings chosen so the eight models cover every documented output shape:
a single URL string, an object (of strings and/or arrays) and a top-level array.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batchrun import models

# Output shapes. Each slot is (key or None, "png" | "mp4", count).
STRING = "string"  # "https://.../image_0.png"
OBJECT = "object"  # {"image": url} or {"image": url, "videos": [url, ...]}
ARRAY = "array"  # [url, url]


@dataclass(frozen=True)
class ModelInfo:
    """What the simulator knows about one model beyond its input schema."""

    model_id: str
    display_name: str
    categories: tuple[str, ...]
    base_price_usd: float
    price_unit: str  # "image" (per file) or "second" (per second of video)
    shape: str
    # (object key or None for string/array shapes, file kind, how many files)
    slots: tuple[tuple[str | None, str, int], ...]

    @property
    def output_kind(self) -> str:
        return "video" if any(kind == "mp4" for _, kind, _ in self.slots) else "image"


_MODELS = [
    ModelInfo(
        "blackforestlabs/flux-1-kontext/pro/edit",
        "FLUX.1 Kontext [pro] Edit",
        ("image-to-image", "image-edit"),
        0.04,
        "image",
        STRING,
        ((None, "png", 1),),
    ),
    ModelInfo(
        "google/nano-banana-2-lite/text-to-image",
        "Nano Banana 2 Lite Text to Image",
        ("text-to-image",),
        0.02,
        "image",
        OBJECT,
        (("image", "png", 1),),
    ),
    ModelInfo(
        "google/nano-banana-2-lite/edit",
        "Nano Banana 2 Lite Edit",
        ("image-to-image", "image-edit"),
        0.025,
        "image",
        OBJECT,
        (("image", "png", 1),),
    ),
    ModelInfo(
        "bytedance/seedream-5.0-pro/image-to-image",
        "Seedream 5.0 Pro Image to Image",
        ("image-to-image",),
        0.03,
        "image",
        ARRAY,
        ((None, "png", 2),),
    ),
    ModelInfo(
        "blackforestlabs/flux-3/text-to-video",
        "FLUX 3 Text to Video",
        ("text-to-video",),
        0.05,
        "second",
        OBJECT,
        (("videos", "mp4", 1),),
    ),
    ModelInfo(
        "bytedance/seedance-2.5/image-to-video/1080p",
        "Seedance 2.5 Image to Video 1080p",
        ("image-to-video",),
        0.08,
        "second",
        OBJECT,
        (("image", "png", 1), ("videos", "mp4", 3)),
    ),
    ModelInfo(
        "bytedance/seedance-2.5/text-to-video/1080p",
        "Seedance 2.5 Text to Video 1080p",
        ("text-to-video",),
        0.07,
        "second",
        ARRAY,
        ((None, "mp4", 1),),
    ),
    ModelInfo(
        "wan-ai/wan-3.0/image-to-video",
        "Wan 3.0 Image to Video",
        ("image-to-video",),
        0.06,
        "second",
        OBJECT,
        (("video", "mp4", 1),),
    ),
]
CATALOG: dict[str, ModelInfo] = {m.model_id: m for m in _MODELS}


def get(model_id: str) -> ModelInfo | None:
    """The model's info, or None when the simulator does not serve it (400001)."""
    info = CATALOG.get(model_id)
    if info is None or models.raw_schema(model_id) is None:
        return None
    return info


def known() -> list[str]:
    return sorted(m for m in CATALOG if models.raw_schema(m) is not None)


def cost(info: ModelInfo, inputs: dict[str, Any]) -> float:
    """What a succeeded job costs in USD: per image, or per second of video."""
    if info.price_unit == "second":
        duration = inputs.get("duration", 5)
        try:
            seconds = float(duration)
        except (TypeError, ValueError):
            seconds = 5.0  # "auto"
        return round(info.base_price_usd * seconds, 6)
    images = sum(count for _, _, count in info.slots)
    return round(info.base_price_usd * images, 6)


def entry(info: ModelInfo, with_schema: bool = True) -> dict[str, Any]:
    """The catalog's JSON for one model (`GET /v1/models/{id}`)."""
    unit = "per second of video" if info.price_unit == "second" else "per output image"
    out: dict[str, Any] = {
        "model_id": info.model_id,
        "display_name": info.display_name,
        "categories": list(info.categories),
        "base_price_usd": info.base_price_usd,
        "price_unit": info.price_unit,
        "pricing_note": f"${info.base_price_usd} {unit} (simulated price)",
        "output_type": models.output_type(info.model_id),
    }
    if with_schema:
        out["input_schema"] = models.raw_schema(info.model_id)
    return out


def search(query: str = "", category: str = "", limit: int = 20, offset: int = 0) -> dict:
    """`GET /v1/models`: {models, total}, filtered by substring and category."""
    q = query.strip().lower()
    found = [
        CATALOG[m]
        for m in known()
        if (not q or q in m.lower() or q in CATALOG[m].display_name.lower())
        and (not category or category in CATALOG[m].categories)
    ]
    page = found[offset : offset + limit]
    return {"models": [entry(m, with_schema=False) for m in page], "total": len(found)}
