"""Static int8 quantization of an exported graph, gated on validation accuracy.

Two quantizers, one gate: ONNX Runtime's static QDQ quantization (`ExportConfig.format` "onnx",
below) or OpenVINO's post-training quantization by NNCF ("openvino": an int8 IR, `export.openvino`).
The gate (both): the largest drop in foreground Dice / mIoU within `int8_gate` and at least
`int8_agreement` of the validation pixels keeping fp32's label (`inference.gate`'s rule).

`quantize_artifact` exports the fp32 graph (parity-checked, `onnx.py`), calibrates activation
ranges on tiles sampled from the *training* images (the artifact's own train/validation split
when it recorded one), quantizes, then scores fp32 and int8 side by side on the *validation*
images through the tiled engine, each on the engine that will run it. When the gate refuses,
nothing is written and `Int8GateError` carries the report; otherwise the int8 graph and its plan are written atomically. Either way the
report holds the measured speed-up (same tiles, same threads) next to the accuracy delta.

ONNX Runtime's default options (`QuantOptions`) were chosen by measurement on an AVX2 CPU without VNNI (see
docs/export.md): QDQ format (ORT fuses it into QLinearConv with its NHWC int8 kernels), per-channel
int8 weights (8- or 7-bit, `reduce_range`, as the validation scores say), uint8 activations, only
convolution-like ops and pooling/concat quantized; normalization, calibration scaling and softmax stay in float. The graph quantized has its
2x2 transposed convolutions rewritten as 1x1 convolutions + DepthToSpace (`shuffle_up`, exact), so
the upsampling runs in int8 too; the fp32 graph it is compared with keeps ConvTranspose, which is
faster in float.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from unetkit.artifact import Artifact, load_artifact
from unetkit.config import MIN_AGREEMENT, DataConfig, ExportConfig, TileChoice, TileConfig, from_dict
from unetkit.data.pairing import pair_samples
from unetkit.data.resample import resample_image
from unetkit.data.spec import load_spec, spec_for_classes
from unetkit.data.splits import split
from unetkit.errors import ConfigError, GateRefused
from unetkit.evaluation.labelled import load_labelled
from unetkit.export.onnx import (
    INSTALL_HINT,
    ParityError,
    default_out,
    export_graph,
    parity_tiles,
    torch_probabilities,
    write_model_and_plan,
)
from unetkit.export.plan import INPUT_NAME, OUTPUT_NAMES, inference_plan
from unetkit.inference.backends import OnnxPredictor
from unetkit.inference.files import labels_from_probabilities, tile_config_for
from unetkit.inference.gate import label_agreement
from unetkit.inference.predict import predict_tiled
from unetkit.metrics.summary import evaluate_predictions


class Int8GateError(GateRefused):
    """The int8 model loses more validation accuracy than `ExportConfig.int8_gate` allows."""

    def __init__(self, message: str, report: Int8Report) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class QuantOptions:
    format: str = "qdq"  # "qdq" or "qoperator"
    per_channel: bool = True
    weight_type: str = "int8"  # "int8" (u8s8 kernels) or "uint8" (u8u8)
    # 7-bit weights: avoids the u8s8 kernels' saturation on CPUs without VNNI, costs resolution where
    # there is none to lose. None: quantize both ways and keep the one whose validation scores are
    # closer to fp32 (`quantize_artifact` measures; `quantize_graph` then means False)
    reduce_range: bool | None = None
    op_types: tuple[str, ...] = ("Conv", "ConvTranspose", "MaxPool", "Concat", "Relu", "DepthToSpace")
    # quantize a graph whose 2x2 transposed convs are 1x1 convs + DepthToSpace (`onnx.ShuffleUp`):
    # ORT has no int8 ConvTranspose, so it would run in float between dequantize/quantize pairs
    shuffle_up: bool = True
    calibration: str = "minmax"  # "minmax", "percentile" or "entropy"
    exclude_first_last: bool = False  # keep the first and the last convolution in float


@dataclass
class Int8Report:
    fp32: dict[str, float]
    int8: dict[str, float]
    delta: float  # largest drop among the gated scores (positive = int8 worse)
    gate: float
    fp32_seconds: float  # median per tile batch
    int8_seconds: float
    tile_batch: tuple[int, ...]
    calibration_keys: list[str]
    validation_keys: list[str]
    options: dict[str, Any]
    written: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    min_agreement: float = MIN_AGREEMENT  # fraction of validation pixels that must keep fp32's label

    @property
    def speedup(self) -> float:
        return self.fp32_seconds / self.int8_seconds

    def refusals(self) -> list[str]:
        """Why the gate refuses the int8 model (empty: it passes)."""
        reasons = []
        if not self.delta <= self.gate:
            reasons.append(f"validation score drops by {self.delta:.4f} (> int8_gate {self.gate})")
        agreement = self.int8.get("agreement", float("nan"))
        if not agreement >= self.min_agreement:
            reasons.append(f"labels agree with fp32's on {agreement:.2%} of the validation pixels "
                           f"(< int8_agreement {self.min_agreement:.1%})")
        return reasons

    def table(self) -> str:
        lines = [f"{'':<22}{'fp32':>10}{'int8':>10}{'delta':>10}"]
        for k in GATED + ("mean_dice",):
            a, b = self.fp32.get(k, float("nan")), self.int8.get(k, float("nan"))
            lines.append(f"{k:<22}{a:>10.4f}{b:>10.4f}{b - a:>+10.4f}")
        lines.append(f"{'label agreement':<22}{'':>10}{self.int8.get('agreement', float('nan')):>10.2%}")
        lines.append(f"{'ms per tile batch':<22}{self.fp32_seconds * 1e3:>10.0f}{self.int8_seconds * 1e3:>10.0f}"
                     f"{'':>4}x{self.speedup:.2f}")
        bf16 = self.extra.get("bf16_seconds")
        if bf16:
            lines.append(f"{'  bf16 (same engine)':<22}{bf16 * 1e3:>10.0f}{'':>14}x{bf16 / self.int8_seconds:.2f}")
        lines.append(f"batch {self.tile_batch}; accuracy gate {self.gate} (largest drop {self.delta:+.4f}), "
                     f"agreement >= {self.min_agreement:.1%}; engine {self.options.get('engine', 'onnxruntime')}; "
                     f"validation {','.join(self.validation_keys)}")
        tried = self.extra.get("reduce_range_tried")
        if tried:
            kept = "7-bit (reduce_range)" if self.options.get("reduce_range") else "8-bit"
            lines.append(f"weights: {kept} kept; largest drop with 8-bit {tried['false']:+.4f}, "
                         f"with 7-bit {tried['true']:+.4f}")
        return "\n".join(lines)


GATED = ("mean_dice_foreground", "mean_iou")


# ---------------------------------------------------------------- data


def split_keys(artifact: Artifact, data: str | Path) -> tuple[list[str], list[str]]:
    """(training keys, validation keys) of `data` under the artifact's recorded data split."""
    recorded = (artifact.meta.train_config or {}).get("data")
    if not recorded:
        raise ConfigError(f"{artifact.path}: the artifact records no training data split; pass --keys (calibration) and --val-keys")
    config = from_dict(DataConfig, recorded, "train_config.data")
    spec = spec_for_classes(load_spec(data), artifact.meta.data_spec)
    train, val = split(pair_samples(spec), config, spec.split_map)
    return [s.key for s in train], [s.key for s in val]


def calibration_tiles(images: Sequence[np.ndarray], tile: tuple[int, int], count: int, seed: int = 0) -> np.ndarray:
    """`count` random tiles (N, C, h, w) cut from `images` in turn (images smaller than a tile are padded)."""
    if not images:
        raise ConfigError("calibration needs at least one training image")
    rng = np.random.default_rng(seed)
    th, tw = tile
    out = []
    for i in range(count):
        im = images[i % len(images)]
        ph, pw = max(0, th - im.shape[1]), max(0, tw - im.shape[2])
        if ph or pw:
            im = np.pad(im, ((0, 0), (0, ph), (0, pw)), mode="reflect")
        y = int(rng.integers(0, im.shape[1] - th + 1))
        x = int(rng.integers(0, im.shape[2] - tw + 1))
        out.append(im[:, y : y + th, x : x + tw])
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)


# ---------------------------------------------------------------- quantization


def quantize_graph(fp32: bytes, tiles: np.ndarray, options: QuantOptions = QuantOptions(), batch: int = 4) -> bytes:
    """int8 ONNX bytes from fp32 ONNX bytes, activation ranges calibrated on `tiles`."""
    try:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise ConfigError(f"int8 export needs onnxruntime.quantization: {INSTALL_HINT}") from None

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{INPUT_NAME: tiles[i : i + batch]} for i in range(0, len(tiles), batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if options.calibration not in methods or options.format not in ("qdq", "qoperator"):
        raise ConfigError(f"QuantOptions: calibration {options.calibration!r} / format {options.format!r} not supported")
    with tempfile.TemporaryDirectory(prefix="unetkit-int8-") as tmp:
        src, pre, dst = (str(Path(tmp) / n) for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        Path(src).write_bytes(fp32)
        quant_pre_process(src, pre, skip_symbolic_shape=True)  # the net's pad-to-multiple defeats symbolic shapes
        model = onnx.load(pre)
        convs = [n.name for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]
        exclude = [convs[0], convs[-1]] if options.exclude_first_last and convs else []
        quantize_static(
            pre, dst, Reader(),
            quant_format=QuantFormat.QDQ if options.format == "qdq" else QuantFormat.QOperator,
            per_channel=options.per_channel, reduce_range=bool(options.reduce_range),
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8 if options.weight_type == "int8" else QuantType.QUInt8,
            op_types_to_quantize=list(options.op_types), nodes_to_exclude=exclude,
            calibrate_method=methods[options.calibration],
            extra_options={"CalibMaxIntermediateOutputs": 8} if options.calibration != "minmax" else {},
        )
        return Path(dst).read_bytes()


def time_predictor(predictor: Any, batch: np.ndarray, repeats: int = 5) -> float:
    """Median seconds of one forward of `batch` (after one warm-up)."""
    predictor(batch)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor(batch)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def score(predictor: Any, artifact: Artifact, samples: Sequence[Any], tile: TileConfig,
          reference: Sequence[np.ndarray] | None = None) -> tuple[dict[str, float], list[np.ndarray]]:
    """(pooled scores, label maps) of a predictor of the exported graph's probabilities on labelled
    samples, through the tiled engine; with `reference` (fp32's label maps of the same samples) the
    scores hold `agreement`: the fraction of labelled pixels whose label is fp32's."""
    config = replace(tile, activation="none")
    labels = [labels_from_probabilities(predict_tiled(predictor, s.image, config), artifact) for s in samples]
    meta = artifact.meta
    result = evaluate_predictions(((s.key, got, s.labels) for s, got in zip(samples, labels, strict=True)),
                                  meta.class_names, meta.ignore_index)
    scores = {k: float(result[k]) for k in ("mean_dice", "mean_dice_foreground", "mean_iou", "pixel_accuracy") if k in result}
    if reference is not None:
        scores["agreement"] = label_agreement(zip(reference, labels, (s.labels for s in samples), strict=True),
                                              meta.ignore_index)
    return scores, labels


def _largest_drop(fp32: dict[str, float], int8: dict[str, float]) -> float:
    return max(fp32[k] - int8[k] for k in GATED if k in fp32)


def _quantize_closest(source: bytes, tiles: np.ndarray, options: QuantOptions, fp32: dict[str, float],
                      score_graph: Any) -> tuple[bytes, dict[str, float], float, QuantOptions, dict[str, float]]:
    """(int8 graph, its scores, their largest drop, the options that made it, {reduce_range: largest
    drop} when both were tried). `score_graph(graph) -> scores`.

    With `options.reduce_range` None both 8-bit and 7-bit weights are quantized and scored, and the one
    closer to fp32 is kept (the smaller drop, then the higher label agreement; 8-bit on a tie):
    whether the u8s8 kernels saturate depends on the CPU (VNNI or not) and the weights, so it is
    measured here rather than guessed from CPU flags."""
    choices = [options] if options.reduce_range is not None else [replace(options, reduce_range=r) for r in (False, True)]
    tried = []
    for choice in choices:
        graph = quantize_graph(source, tiles, choice)
        scores = score_graph(graph)
        tried.append((_largest_drop(fp32, scores), graph, scores, choice))
    # the smaller drop, then the higher label agreement; the first (8-bit) on a tie
    drop, graph, scores, choice = min(tried, key=lambda t: (t[0], -t[2].get("agreement", 0.0)))
    both = {str(t[3].reduce_range).lower(): t[0] for t in tried} if len(tried) > 1 else {}
    return graph, scores, drop, choice, both


def quantize_artifact(
    model: str | Path | Artifact, data: str | Path, out: str | Path | None = None,
    config: ExportConfig = ExportConfig(int8=True), *, keys: Sequence[str] | None = None,
    val_keys: Sequence[str] | None = None, options: QuantOptions = QuantOptions(), tile: TileChoice = None,
    progress: bool = False,
) -> Int8Report:
    """Quantize, score fp32 vs int8 on validation images, write `out` (+ plan) only if within the gate.

    `config.format` "onnx": a QDQ graph by ONNX Runtime's static quantization (`options`), run and
    gated on ONNX Runtime, written as `MODEL.int8.onnx`; "openvino": OpenVINO's post-training
    quantization (NNCF) of the fp32 graph, run and gated on OpenVINO, written as an IR
    `MODEL.int8.xml` + `.bin` (`options` do not apply). `keys`: training images for calibration
    (default: the artifact's training split of `data`); `val_keys`: validation images (default: its
    validation split). Raises `Int8GateError` (nothing written) when the largest drop in foreground
    Dice / mIoU exceeds `config.int8_gate` or fewer than `config.int8_agreement` of the validation
    pixels keep fp32's label.
    """
    artifact = model if isinstance(model, Artifact) else load_artifact(model)
    openvino = config.format == "openvino"
    if keys is None or val_keys is None:
        train_keys, split_val = split_keys(artifact, data)
        keys = list(keys) if keys is not None else train_keys
        val_keys = list(val_keys) if val_keys is not None else split_val
    if not val_keys:
        raise ConfigError(f"{data}: no validation images to score the int8 model on; pass --val-keys")
    if set(keys) & set(val_keys):
        raise ConfigError(f"calibration keys and validation keys overlap ({sorted(set(keys) & set(val_keys))[:5]}); "
                          "calibrate on training images only")
    suffix = ".xml" if openvino else ".onnx"
    out = Path(out) if out is not None else default_out(artifact.path or "model.unetkit", int8=True, suffix=suffix)
    if out.suffix != suffix:
        raise ConfigError(f"{out}: an int8 {config.format} model is written as NAME{suffix}")
    tile = tile_config_for(artifact, tile)
    size = tuple(tile.tile_size)[:2]
    batch = max(1, int(tile.batch_size))
    if openvino:
        from unetkit.export import openvino as ov_export  # lazy: the optional openvino extra
        from unetkit.inference.openvino import OpenVinoPredictor

        ov_export.require_nncf()  # before any work
        run = lambda graph, name="openvino": OpenVinoPredictor(graph, name, output=OUTPUT_NAMES[0], batch_size=batch)  # noqa: E731
    else:
        run = lambda graph: OnnxPredictor(graph, output=OUTPUT_NAMES[0])  # noqa: E731

    made: dict[int, tuple[Any, Any]] = {}  # id -> (graph, its predictor): each graph compiled once

    def predictor(graph: Any) -> Any:
        if id(graph) not in made:
            made[id(graph)] = (graph, run(graph))
        return made[id(graph)][1]

    fp32 = export_graph(artifact, config.opset)
    source = export_graph(artifact, config.opset, shuffle_up=True) if options.shuffle_up and not openvino else fp32
    for graph in {id(g): g for g in (fp32, source)}.values():
        diff = max(float(np.abs(predictor(graph)(b) - torch_probabilities(artifact, b)).max())
                   for b in parity_tiles(artifact, size))  # type: ignore[arg-type]
        if not diff <= config.parity_tolerance:
            raise ParityError(f"fp32 graph differs from the torch pipeline by {diff:.3g} (> {config.parity_tolerance:g}); "
                              "not quantizing")
    _, train = load_labelled(artifact, data, list(keys), progress)
    tiles = calibration_tiles([resample_image(s.image, artifact.meta.resolution) for s in train], size,  # its scale
                              config.calibration_images)  # type: ignore[arg-type]
    del train
    _, val = load_labelled(artifact, data, list(val_keys), progress)
    s32, labels32 = score(predictor(fp32), artifact, val, tile)
    score_graph = lambda g: score(predictor(g), artifact, val, tile, labels32)[0]  # noqa: E731
    extra: dict[str, Any] = {}
    if openvino:
        int8 = ov_export.nncf_quantize(fp32, tiles, progress)
        s8 = score_graph(int8)
        delta, used = _largest_drop(s32, s8), {"engine": "openvino", "quantizer": "nncf", "nncf": _nncf_version()}
    else:
        int8, s8, delta, chosen, tried = _quantize_closest(source, tiles, options, s32, score_graph)
        used = {"engine": "onnxruntime", **asdict(chosen)}
        extra = {"reduce_range_tried": tried} if tried else {}
    bench = tiles[:batch]
    t32, t8 = time_predictor(predictor(fp32), bench), time_predictor(predictor(int8), bench)
    if openvino and ov_export.ov_backend.unavailable("openvino-bf16") is None:  # the best non-int8 path on this CPU
        extra["bf16_seconds"] = time_predictor(run(fp32, "openvino-bf16"), bench)
    report = Int8Report(s32, s8, delta, config.int8_gate, t32, t8, tuple(bench.shape), list(keys), list(val_keys),
                        used, extra=extra, min_agreement=config.int8_agreement)
    reasons = report.refusals()
    if reasons:
        raise Int8GateError(f"int8 model refused: {'; '.join(reasons)}; speed-up x{report.speedup:.2f}; "
                            f"nothing written\n{report.table()}", report)
    quant = {"options": report.options, **report.extra, "calibration_keys": report.calibration_keys,
             "calibration_tiles": len(tiles),
             "validation": {"keys": report.validation_keys, "fp32": s32, "int8": s8, "largest_drop": delta,
                            "agreement": s8["agreement"]},
             "gate": {"int8_gate": config.int8_gate, "int8_agreement": config.int8_agreement},
             "speedup": report.speedup, "fp32_seconds": t32, "int8_seconds": t8}
    plan = inference_plan(artifact, tile, precision="int8", opset=config.opset, quantization=quant)
    if openvino:
        plan["openvino"] = {"version": ov_export.ov_backend.openvino_version()}
        ov_export.write_ir(int8, out, plan)
    else:
        write_model_and_plan(out, int8, plan)
    report.written = out
    return report


def _nncf_version() -> str:
    from importlib.metadata import version

    return version("nncf")
