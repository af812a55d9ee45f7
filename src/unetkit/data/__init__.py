"""Data stage: from a folder of labelled images to batches of patches.

detect/load a `DatasetSpec` → `pair_samples` → `validate` → `split` → `load_samples` →
`PatchSampler` → `Augmenter`; `fingerprint` summarizes the data for the planner and the artifact.
"""

from unetkit.data.dataset import LoadedSample, PatchSampler, load_samples
from unetkit.data.fingerprint import channel_stats, fingerprint
from unetkit.data.io import read_image, read_mask, write_png, write_tiff
from unetkit.data.pairing import Sample, pair_samples
from unetkit.data.spec import ClassInfo, DatasetSpec, decode_mask, detect_spec, load_spec, save_spec
from unetkit.data.splits import split
from unetkit.data.synthetic import make_drive_like_dataset, make_synthetic_dataset
from unetkit.data.transforms import Augmenter
from unetkit.data.validate import Problem, ValidationReport, validate, validate_split

__all__ = [
    "Augmenter",
    "ClassInfo",
    "DatasetSpec",
    "LoadedSample",
    "PatchSampler",
    "Problem",
    "Sample",
    "ValidationReport",
    "channel_stats",
    "decode_mask",
    "detect_spec",
    "fingerprint",
    "load_samples",
    "load_spec",
    "make_drive_like_dataset",
    "make_synthetic_dataset",
    "pair_samples",
    "read_image",
    "read_mask",
    "save_spec",
    "split",
    "validate",
    "validate_split",
    "write_png",
    "write_tiff",
]
