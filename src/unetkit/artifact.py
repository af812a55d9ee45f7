"""The model artifact: the one file every stage after training consumes.

A safetensors file (weights, never pickle) whose header metadata `unetkit` holds the JSON
`ArtifactMeta`: architecture, classes, normalization, patch size, data set fingerprint, training
config and history, validation metrics, calibration, postprocessing, drift baseline, a small labelled
validation sample (`ValidationSample`: what the parity gate checks reduced precisions on) and versions.
Any safetensors reader opens it; `unetkit info MODEL` prints the metadata.

Integrity: the metadata carries the sha256 of the weights and of the metadata itself; loading
recomputes both and refuses a corrupt file. These hashes detect corruption, not tampering: whoever
edits a file can recompute them (save_artifact does). Tampering is what signatures detect: `sign_artifact`
adds an Ed25519 signature (signing.py), and `load_artifact(path, trust=...)` refuses a file not signed by
a trusted key, or `sha256=...` one whose bytes are not the pinned ones. Loading reads the file once and
hashes, verifies and deserializes that one buffer, so a file swapped in between is never used. Writing is
durable and atomic (`atomic_write`), so a crash or a full disk never leaves half an artifact behind.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import io
import json
import platform
import re
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import unetkit
from unetkit.config import ModelConfig, from_dict, to_dict
from unetkit.data.atomic import atomic_write
from unetkit.errors import ArtifactError, ConfigError
from unetkit.models import build_model
from unetkit.models.blocks import crop_to, pad_to_multiple
from unetkit.models.factory import input_multiple
from unetkit.signing import SIGNATURE_KEY, TrustPolicy, load_private_key, sign, signed_message

FORMAT_VERSION = 1
META_KEY = "unetkit"
ARTIFACT_NAME = "model.unetkit"  # the artifact's file name in a training run's out_dir


@dataclass(frozen=True)
class ArtifactMeta:
    model: ModelConfig
    class_names: tuple[str, ...]
    mean: tuple[float, ...]  # per input channel, raw intensity units
    std: tuple[float, ...]
    patch_size: tuple[int, ...]
    class_colors: tuple[tuple[int, int, int], ...] = ()
    ignore_index: int = 255
    name: str = "model"
    format_version: int = FORMAT_VERSION
    temperature: float = 1.0  # calibration: logits / temperature
    class_scale: tuple[float, ...] = ()  # optional vector scaling: logits * scale + bias
    class_bias: tuple[float, ...] = ()
    postprocess: dict[str, Any] = field(default_factory=dict)
    tta: bool = False  # inference averages the TTA views (`unetkit.tuning.tta`: adopted where it helps)
    tta_temperature: float = 1.0  # ... and recalibrates their mean with this temperature (fitted with the choice)
    resolution: float = 1.0  # trained at this fraction of the native side: inference resamples alike
    # multi-scale inference (`unetkit.tuning.scales`: adopted where it helps): the fractions of the native
    # side inference predicts at and averages; () = `resolution` alone
    resolutions: tuple[float, ...] = ()
    resolutions_temperature: float = 1.0  # ... and the temperature their mean is recalibrated with
    data_spec: dict[str, Any] = field(default_factory=dict)  # how masks map to classes
    fingerprint: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    history: list[Any] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    drift_baseline: dict[str, Any] = field(default_factory=dict)
    validation_sample: dict[str, Any] = field(default_factory=dict)  # `ValidationSample.to_dict()`; {} when none
    lineage: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    weights_sha256: str = ""
    meta_sha256: str = ""

    def __post_init__(self) -> None:
        c = self.model.in_channels
        if len(self.mean) != c or len(self.std) != c:
            raise ConfigError(f"ArtifactMeta: mean/std need {c} values (model.in_channels), got {len(self.mean)}/{len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"ArtifactMeta.std: every value must be > 0, got {list(self.std)}")
        if len(self.class_names) != self.model.out_channels:
            raise ConfigError(
                f"ArtifactMeta.class_names: {len(self.class_names)} names for {self.model.out_channels} output channels"
            )
        if self.temperature <= 0:
            raise ConfigError(f"ArtifactMeta.temperature: must be > 0, got {self.temperature}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        """Input channels (the model's); an exported model's meta has the same name (`export.deployed`)."""
        return self.model.in_channels

    def colors(self) -> list[tuple[int, int, int]]:
        """Class colours for overlays: stored ones, else a fixed distinguishable palette."""
        if len(self.class_colors) == self.num_classes:
            return [tuple(c) for c in self.class_colors]
        return default_palette(self.num_classes)

    def sample(self) -> ValidationSample | None:
        """The stored validation sample (training's end keeps a few labelled crops), or None."""
        return ValidationSample.from_dict(self.validation_sample, f"{self.name}: validation_sample")


def default_palette(n: int) -> list[tuple[int, int, int]]:
    base = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]
    out = list(base[:n])
    rng = torch.Generator().manual_seed(7)
    while len(out) < n:
        out.append(tuple(int(v) for v in torch.randint(40, 256, (3,), generator=rng)))
    return out


@dataclass(frozen=True)
class Artifact:
    meta: ArtifactMeta
    state_dict: dict[str, torch.Tensor]
    path: Path | None = None
    signer: str = ""  # key id of the trusted key whose signature was verified on loading; '' if none was

    def build_model(self) -> nn.Module:
        """The network with the stored weights, in eval mode. An architecture a plugin provides
        (`unetkit.models.plugins`) needs that plugin installed; without it, an ArtifactError names it."""
        try:
            model = build_model(self.meta.model)
        except ConfigError as e:
            raise ArtifactError(f"{self.path or 'artifact'}: {e}") from None
        try:
            model.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            raise ArtifactError(f"{self.path or 'artifact'}: weights do not fit the stored architecture ({first})") from None
        return model.eval()

    def pipeline_module(self, probabilities: bool = False) -> InferencePipeline:
        """normalization -> network -> calibrated logits (or softmax probabilities)."""
        net = self.build_model()
        return InferencePipeline(net, self.meta, probabilities=probabilities,
                                 multiple=input_multiple(self.meta.model, net)).eval()

    def with_meta(self, **changes: Any) -> Artifact:
        return dataclasses.replace(self, meta=dataclasses.replace(self.meta, **changes))


class InferencePipeline(nn.Module):
    """Raw-intensity tiles (N,C,H,W) -> calibrated logits or probabilities (N,K,H,W).

    What predictors wrap and what ONNX export traces, so every backend computes the same thing.
    `multiple` > 1 (a plugin network that needs sizes divisible by it): the normalized input is
    zero-padded up to it and the logits cropped back (`unetkit.models.factory.input_multiple`).
    """

    def __init__(self, net: nn.Module, meta: ArtifactMeta, probabilities: bool = False, multiple: int = 1) -> None:
        super().__init__()
        self.net = net
        self.multiple = multiple
        self.probabilities = probabilities
        self.in_channels = meta.model.in_channels
        self.out_channels = meta.num_classes
        self.register_buffer("mean", torch.tensor(meta.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(meta.std, dtype=torch.float32).view(1, -1, 1, 1))
        k = meta.num_classes
        scale = torch.tensor(meta.class_scale or [1.0] * k, dtype=torch.float32) / meta.temperature
        bias = torch.tensor(meta.class_bias or [0.0] * k, dtype=torch.float32)
        self.register_buffer("scale", scale.view(1, -1, 1, 1))
        self.register_buffer("bias", bias.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) * self.inv_std
        if self.multiple > 1:
            logits = crop_to(self.net(pad_to_multiple(x, self.multiple)), x.shape[2:])
        else:
            logits = self.net(x)
        logits = logits * self.scale + self.bias
        return torch.softmax(logits, dim=1) if self.probabilities else logits


# ---------------------------------------------------------------- the validation sample


SAMPLE_SCHEMA = 1


@dataclass(frozen=True)
class ValidationSample:
    """A few labelled validation crops kept with a model, so that any backend or precision can be
    checked against fp32 and the truth where the model is loaded or exported (`inference.gate`).

    Stored as `ArtifactMeta.validation_sample` (and in an exported model's plan, with fp32's labels):
    JSON with the arrays as one base64 `.npz` (deflated, loaded without pickle). Being metadata, it
    is covered by `meta_sha256`, hence by a signature: a sample that decides which precision runs
    must not be swappable without breaking the signature."""

    images: np.ndarray  # (N, C, h, w) raw intensity units, kept as uint8 / uint16 / float16
    labels: np.ndarray  # (N, h, w) class indices (ignore_index kept), uint8 (uint16 beyond 255 classes)
    keys: tuple[str, ...]  # the validation image of each crop
    origins: tuple[tuple[int, int], ...]  # (y, x) of each crop in its image
    fp32_labels: np.ndarray | None = None  # fp32's arg-max labels, (N, h, w): in an exported model's plan

    def float_images(self) -> np.ndarray:
        return np.ascontiguousarray(self.images, dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        arrays = {"images": self.images, "labels": self.labels}
        if self.fp32_labels is not None:
            arrays["fp32_labels"] = self.fp32_labels
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        data = buffer.getvalue()
        return {"schema": SAMPLE_SCHEMA, "crops": len(self.keys), "shape": list(self.images.shape),
                "dtype": str(self.images.dtype), "keys": list(self.keys), "origins": [list(o) for o in self.origins],
                "bytes": len(data), "npz_base64": base64.b64encode(data).decode("ascii")}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "validation_sample") -> ValidationSample | None:
        """The sample, or None for `{}` (models written before samples were stored, or without validation data)."""
        if not d:
            return None
        if d.get("schema") != SAMPLE_SCHEMA:
            raise ArtifactError(f"{where}: validation sample schema {d.get('schema')!r}; this unetkit reads {SAMPLE_SCHEMA}")
        try:
            with np.load(io.BytesIO(base64.b64decode(d["npz_base64"], validate=True)), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            images, labels = arrays["images"], arrays["labels"]
            if images.ndim != 4 or labels.shape != (images.shape[0], *images.shape[2:]):
                raise ValueError(f"images {images.shape} and labels {labels.shape} do not pair")
            fp32 = arrays.get("fp32_labels")
            if fp32 is not None and fp32.shape != labels.shape:
                raise ValueError(f"fp32_labels {fp32.shape} differ from labels {labels.shape}")
            return cls(images, labels, tuple(d["keys"]), tuple(tuple(int(v) for v in o) for o in d["origins"]), fp32)
        except (KeyError, TypeError, ValueError, OSError, binascii.Error) as e:
            raise ArtifactError(f"{where}: unreadable validation sample ({type(e).__name__}: {e})") from None

    def summary(self) -> dict[str, Any]:
        """What `unetkit info` shows: the sample without its arrays."""
        return {"crops": len(self.keys), "shape": list(self.images.shape), "dtype": str(self.images.dtype),
                "keys": list(self.keys), "fp32_labels": self.fp32_labels is not None}


# ---------------------------------------------------------------- hashing


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _meta_json(meta: ArtifactMeta) -> dict[str, Any]:
    d = to_dict(meta)
    d.pop("meta_sha256")
    if not d["validation_sample"]:  # absent from artifacts written before it existed: their hash stays theirs
        del d["validation_sample"]
    if not d["tta"]:  # likewise
        del d["tta"]
    if d["resolution"] == 1.0:  # likewise
        del d["resolution"]
    if not d["resolutions"]:  # likewise
        del d["resolutions"]
    for key in ("resolutions_temperature", "tta_temperature"):  # likewise
        if d[key] == 1.0:
            del d[key]
    for key, default in (("encoder", "unet"), ("options", {})):  # ModelConfig fields added later, likewise
        if d["model"][key] == default:
            del d["model"][key]
    return d


def meta_sha256(meta: ArtifactMeta) -> str:
    canonical = json.dumps(_meta_json(meta), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# ---------------------------------------------------------------- save / load


def runtime_versions() -> dict[str, str]:
    return {"unetkit": unetkit.__version__, "torch": torch.__version__, "python": platform.python_version()}


def save_artifact(path: str | Path, model_or_state: nn.Module | dict[str, torch.Tensor], meta: ArtifactMeta) -> Path:
    """Write weights + metadata atomically; fills versions, created time and both hashes."""
    path = Path(path)
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    meta = dataclasses.replace(
        meta,
        versions=meta.versions or runtime_versions(),
        created=meta.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        weights_sha256=weights_sha256(tensors),
        meta_sha256="",
    )
    meta = dataclasses.replace(meta, meta_sha256=meta_sha256(meta))
    from safetensors.torch import save

    # serialized in memory, so a full disk is a plain OSError (StorageError) and not a serializer's own
    return atomic_write(path, save(tensors, metadata={META_KEY: json.dumps(to_dict(meta))}))


def read_meta(path: str | Path, verify: bool = True) -> ArtifactMeta:
    """The metadata only (cheap: reads the header). `verify` checks the metadata hash."""
    path = _existing(path)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for garbage
        raise ArtifactError(f"{path}: not a unetkit model artifact (unreadable safetensors header: {e})") from None
    return _parse_meta(path, header, verify)


def load_artifact(path: str | Path, sha256: str | None = None, trust: TrustPolicy | None = None) -> Artifact:
    """Load and verify an artifact; refuses corrupt files, and with `sha256` (a pin on the file's bytes)
    or `trust` (signatures, see signing.py) tampered ones, each with a clear error.

    The file is read once: the pin, the hashes, the signature and the tensors all come from that one
    buffer (so it costs the file's size in memory on top of the tensors, briefly)."""
    path = _existing(path)
    return artifact_from_bytes(path.read_bytes(), path, sha256=sha256, trust=trust)


def artifact_from_bytes(data: bytes, path: Path, sha256: str | None = None, trust: TrustPolicy | None = None) -> Artifact:
    """`load_artifact` over bytes already read (`path` names them in messages)."""
    if sha256 is not None:
        expected = sha256.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", expected):
            raise ArtifactError(f"sha256 pin {sha256!r}: expected 64 hex digits (sha256sum {path})")
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise ArtifactError(f"{path}: sha256 {actual[:12]}… is not the pinned {expected[:12]}…; "
                                "the file was replaced or modified — refusing it")
    header = _header_metadata(path, data)
    from safetensors.torch import load as load_tensors

    try:
        state = load_tensors(data)
    except Exception as e:  # safetensors raises its own error types for garbage
        raise ArtifactError(f"{path}: not a readable model artifact ({type(e).__name__}: {e})") from None
    meta = _parse_meta(path, header, verify=True)
    weights = weights_sha256(state)
    if weights != meta.weights_sha256:
        raise ArtifactError(
            f"{path}: weights sha256 does not match the recorded {meta.weights_sha256[:12]}…; "
            "the file was modified or corrupted — re-export it from training or restore it from the registry"
        )
    signer = trust.check(str(path), header.get(SIGNATURE_KEY), signed_message(weights, meta.meta_sha256)) if trust else ""
    return Artifact(meta=meta, state_dict=state, path=path, signer=signer)


def sign_artifact(path: str | Path, key: str | Path) -> str:
    """Sign an artifact in place with the Ed25519 private key in file `key`; returns the key id.

    The artifact is verified first (a corrupt file is never signed); the tensors and the metadata
    are written back unchanged, with the signature record beside them (replacing an older one)."""
    private = load_private_key(key)
    path = _existing(path)
    data = path.read_bytes()
    art = artifact_from_bytes(data, path)
    record = sign(private, signed_message(art.meta.weights_sha256, art.meta.meta_sha256))
    from safetensors.torch import save

    metadata = {META_KEY: _header_metadata(path, data)[META_KEY], SIGNATURE_KEY: json.dumps(record)}
    atomic_write(path, save(art.state_dict, metadata=metadata))
    return record["key_id"]


def _header_metadata(path: Path, data: bytes) -> dict[str, str]:
    """The safetensors header's `__metadata__` (8-byte little-endian length, then JSON)."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        if n > len(data) - 8:
            raise ValueError(f"header length {n} beyond the end of the file")
        header = json.loads(data[8 : 8 + n])
        metadata = header.get("__metadata__") or {}
        if not isinstance(metadata, dict):
            raise ValueError("__metadata__ is not a mapping")
    except (struct.error, ValueError, AttributeError) as e:
        raise ArtifactError(f"{path}: not a unetkit model artifact (unreadable safetensors header: {e})") from None
    return metadata


def update_artifact(path: str | Path, **changes: Any) -> Artifact:
    """Rewrite an artifact with some metadata fields changed (calibration, postprocess...)."""
    art = load_artifact(path).with_meta(**changes)
    save_artifact(path, art.state_dict, art.meta)
    return load_artifact(path)


def _existing(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p}: model artifact not found")
    if p.is_dir():
        raise ArtifactError(f"{p}: is a folder; expected a model artifact file (e.g. model.unetkit)")
    return p


def _parse_meta(path: Path, header: dict[str, str], verify: bool) -> ArtifactMeta:
    if META_KEY not in header:
        raise ArtifactError(f"{path}: a safetensors file without unetkit metadata; not a unetkit model artifact")
    try:
        raw = json.loads(header[META_KEY])
    except json.JSONDecodeError:
        raise ArtifactError(f"{path}: unetkit metadata is not valid JSON; the file is corrupt") from None
    version = raw.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: artifact format version {version!r} is newer than this unetkit understands "
            f"({FORMAT_VERSION}); upgrade unetkit"
        )
    try:
        meta = from_dict(ArtifactMeta, raw, "artifact")
    except ConfigError as e:
        raise ArtifactError(f"{path}: invalid metadata: {e}") from None
    if verify and meta_sha256(meta) != meta.meta_sha256:
        raise ArtifactError(
            f"{path}: metadata sha256 does not match the recorded one; the metadata was edited or corrupted"
        )
    return meta
