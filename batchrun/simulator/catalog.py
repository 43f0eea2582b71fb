"""The simulated catalog: prices, output shapes and catalog entries of the local models.

Input schemas come from schemas/models (batchrun.catalog.models); prices and output shapes are
simulator settings chosen so the eight models cover every documented output shape:
a single URL string, an object (of strings and/or arrays) and a top-level array.

A job costs its price times the units its catalog entry names, by the rules batchrun estimates
with: per second, the job's `duration` or the schema's default (a duration of "auto" is billed
as AUTO_SECONDS, which a client cannot know before the result); per image or per request, 1
times a count input (`num_images`, ...) where the schema has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from batchrun.catalog import models

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
    price_unit: str  # "image" or "request" (per job), "second" (per second of video)
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
        0.06,
        "request",  # two images a request, no count input: priced by the request
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


AUTO_SECONDS = 5  # what a duration of "auto" comes to
_COUNT_FIELDS = ("num_images", "num_outputs", "num_videos")
_UNIT_NOTES = {
    "second": "per second of video",
    "image": "per output image",
    "request": "per request",
}


def cost(info: ModelInfo, inputs: dict[str, Any]) -> float:
    """What a succeeded job costs in USD: price x units (see the module's docstring)."""
    units = _units(info, inputs)
    return float(Decimal(repr(info.base_price_usd)) * units)


def _units(info: ModelInfo, inputs: dict[str, Any]) -> Decimal:
    props = (models.raw_schema(info.model_id) or {}).get("properties") or {}

    def given(name: str) -> Any:
        if name in inputs:
            return inputs[name]
        prop = props.get(name)
        return prop.get("default") if isinstance(prop, dict) else None

    if info.price_unit == "second":
        return _decimal(given("duration")) or Decimal(AUTO_SECONDS)
    for name in _COUNT_FIELDS:
        if name in inputs or name in props:
            return _decimal(given(name)) or Decimal(1)
    return Decimal(1)


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        return None  # "auto"
    return number if number.is_finite() and number >= 0 else None


def entry(info: ModelInfo, with_schema: bool = True) -> dict[str, Any]:
    """The catalog's JSON for one model (`GET /v1/models/{id}`)."""
    unit = _UNIT_NOTES[info.price_unit]
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


def search(query: str = "", category: str = "", limit: int = 20, offset: int = 0) -> dict[str, Any]:
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
