"""Overlap-tile inference over any predictor callable (torch module, ONNX Runtime session, remote).

`predict_tiled(predictor, image, TileConfig)` for arrays in memory, `predict_stream(...)` for
gigapixel files in bounded memory, `make_predictor(artifact)` for the fastest local backend.
"""

from unetkit.inference.backends import OnnxPredictor, TorchPredictor, make_predictor
from unetkit.inference.predict import predict_image, predict_tiled
from unetkit.inference.streaming import estimate_memory, predict_stream
from unetkit.inference.tiling import constant_weights, gaussian_weights, tile_starts

__all__ = [
    "OnnxPredictor", "TorchPredictor", "constant_weights", "estimate_memory", "gaussian_weights",
    "make_predictor", "predict_image", "predict_stream", "predict_tiled", "tile_starts",
]
