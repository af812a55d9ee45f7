"""The HTTP API's JSON shapes (pydantic): what /v1/segment, /v1/model, health and errors return."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ClassInfo(BaseModel):
    index: int
    name: str
    color: tuple[int, int, int] = Field(description="RGB colour used in colour masks and overlays")


class RegistryVersion(BaseModel):
    registry: str = Field(description="the registry database (password hidden)")
    name: str
    version: int
    stage: str = Field(description="the stage the server follows")
    sha256: str = Field(description="the artifact's sha256 (its address in the registry's store)")


class ModelInfo(BaseModel):
    name: str
    version: str = Field(description="first 12 hex digits of the weights' sha256; the registry version number "
                                     "when served from a model registry")
    role: Literal["primary", "candidate"] = "primary"
    classes: list[ClassInfo]
    in_channels: int
    patch_size: list[int] = Field(description="tile size the model was trained on (H, W)")
    input: str = Field(description="what to send", default="an image file (PNG, JPEG, TIFF, GIF, BMP) in raw intensity units")
    temperature: float = 1.0
    created: str = ""
    backend: str = Field(default="", description="the inference backend running it (torch, compile, onnx, openvino, "
                                                 "openvino-bf16), as chosen when it was loaded")
    precision: str = Field(default="fp32", description="what it computes in: fp32, bf16 (a bf16 backend behind the "
                                                       "parity gate) or int8 (an int8 export)")
    format: str = Field(default="artifact", description="what was loaded: artifact (.unetkit), onnx or xml (an "
                                                        "exported model with its inference plan)")
    tta: bool = Field(default=False, description="whether a request that does not say averages the TTA views (the "
                                                 "model's own choice)")
    tta_views: str = Field(default="dihedral", description="the views TTA averages: dihedral (8), flips (4) or "
                                                           "mirror (2, a model trained upright)")
    tta_temperature: float = Field(default=1.0, description="the temperature the views' mean is recalibrated with, "
                                   "softmax(log(mean) / T), whenever TTA runs (fitted on the validation split)")
    resolutions: list[float] = Field(default_factory=list, description="multi-scale inference: the fractions of the "
                                     "native side each image is predicted at and averaged over ([]: one resolution)")
    resolutions_temperature: float = Field(default=1.0, description="the temperature the scales' mean is recalibrated "
                                           "with, softmax(log(mean) / T)")
    registry: RegistryVersion | None = Field(default=None, description="the registry version served, if any")


class ModelResponse(ModelInfo):
    """The primary model, and the candidate when a rollout is configured."""

    candidate: ModelInfo | None = None
    rollout: Literal["none", "canary", "shadow"] = "none"
    canary_percent: float = 0.0


class ClassSummary(BaseModel):
    index: int
    name: str
    color: tuple[int, int, int]
    pixel_fraction: float = Field(description="fraction of pixels predicted as this class")
    mean_confidence: float | None = Field(description="mean winning probability over those pixels; null if none")


class ConfidenceSummary(BaseModel):
    mean: float = Field(description="mean over pixels of the winning class probability")
    p05: float = Field(description="5th percentile of the winning probability")
    low_fraction: float = Field(description="fraction of pixels whose winning probability is below 0.5")


class Timing(BaseModel):
    decode_ms: float
    inference_ms: float
    total_ms: float


class RLE(BaseModel):
    size: list[int] = Field(description="[height, width]")
    counts: list[int] = Field(description="COCO uncompressed RLE, column-major, starting with a zero run")


class SegmentResponse(BaseModel):
    request_id: str
    model: str
    model_version: str
    model_role: Literal["primary", "candidate"]
    width: int
    height: int
    classes: list[ClassSummary]
    confidence: ConfidenceSummary
    timing: Timing
    tta: bool = False
    rle: dict[str, RLE] | None = Field(default=None, description="per class name, when include=rle")
    polygons: dict[str, Any] | None = Field(
        default=None,
        description="GeoJSON FeatureCollection in pixel coordinates (one Polygon per component), when include=polygons",
    )
    mask_png: str | None = Field(
        default=None, description="base64 RGBA colour mask PNG (background transparent), when include=mask"
    )
    overlay_png: str | None = Field(default=None, description="base64 overlay PNG, when include=overlay")
    image_png: str | None = Field(default=None, description="base64 PNG of the input as displayed, when include=image")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok", "loading", "ready", "draining", "failed"]
    model_version: str | None = None
    error: str | None = None
