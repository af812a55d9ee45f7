"""The U-Net family: `build_model(ModelConfig)`, named presets, size/cost counters, BN folding."""

from unetkit.models.factory import MODELS, PRESETS, build_model, models_table, preset_config
from unetkit.models.flops import count_flops, count_parameters
from unetkit.models.fuse import fuse_for_inference
from unetkit.models.unet import UNet
from unetkit.models.unetpp import UNetPlusPlus

__all__ = [
    "MODELS",
    "PRESETS",
    "UNet",
    "UNetPlusPlus",
    "build_model",
    "count_flops",
    "count_parameters",
    "fuse_for_inference",
    "models_table",
    "preset_config",
]
