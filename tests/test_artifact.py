import hashlib
import json
import os
import struct

import numpy as np
import pytest
import torch

from unetkit.artifact import (
    ArtifactMeta,
    ValidationSample,
    load_artifact,
    read_meta,
    save_artifact,
    update_artifact,
)
from unetkit.config import ModelConfig
from unetkit.errors import ArtifactError, ConfigError, StorageError


def _meta(**kw) -> ArtifactMeta:
    base = dict(model=ModelConfig(in_channels=1, out_channels=2, base_width=4, depth=2),
                class_names=("background", "vessel"), mean=(120.0,), std=(40.0,), patch_size=(64, 64))
    return ArtifactMeta(**(base | kw))


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(4, 3, generator=g), "b.bias": torch.randn(5, generator=g)}


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    path = save_artifact(tmp_path / "m.unetkit", _state(), _meta(metrics={"val": {"dice": 0.8}}))
    art = load_artifact(path)
    for k, v in _state().items():
        assert torch.equal(art.state_dict[k], v)
    assert art.meta.metrics == {"val": {"dice": 0.8}}
    assert art.meta.versions["torch"] == torch.__version__
    assert len(art.meta.weights_sha256) == 64
    assert read_meta(path) == art.meta
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _flip_byte(path, offset_from_end: int) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


def test_tampered_weights_are_refused(tmp_path):
    path = save_artifact(tmp_path / "m.unetkit", _state(), _meta())
    _flip_byte(path, 3)  # the tensor data sits at the end of a safetensors file
    with pytest.raises(ArtifactError, match="weights sha256 does not match"):
        load_artifact(path)


def test_edited_metadata_is_refused(tmp_path):
    path = save_artifact(tmp_path / "m.unetkit", _state(), _meta())
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["unetkit"])
    meta["mean"] = [0.0]  # a silent change of normalization must not go unnoticed
    header["__metadata__"]["unetkit"] = json.dumps(meta)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])
    with pytest.raises(ArtifactError, match="metadata sha256 does not match"):
        load_artifact(path)


def _edit_meta(path, edit) -> None:
    """Rewrite the artifact's metadata JSON through `edit(meta_dict)`, tensors unchanged."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["unetkit"])
    edit(meta)
    header["__metadata__"]["unetkit"] = json.dumps(meta)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])


def test_the_validation_sample_is_optional_and_covered_by_the_metadata_hash(tmp_path):
    # an artifact written before the field existed: no key, its meta_sha256 over the JSON without it
    old = save_artifact(tmp_path / "old.unetkit", _state(), _meta())

    def as_written_before(meta):
        del meta["validation_sample"], meta["meta_sha256"], meta["model"]["encoder"], meta["model"]["options"], meta["tta"]
        del meta["resolution"], meta["resolutions"], meta["resolutions_temperature"], meta["tta_temperature"]
        meta["meta_sha256"] = hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    _edit_meta(old, as_written_before)
    assert load_artifact(old).meta.sample() is None

    images = np.arange(2 * 1 * 8 * 8, dtype=np.uint8).reshape(2, 1, 8, 8)
    sample = ValidationSample(images, (images[:, 0] % 2).astype(np.uint8), ("a", "b"), ((0, 0), (4, 2)))
    path = save_artifact(tmp_path / "m.unetkit", _state(), _meta(validation_sample=sample.to_dict()))
    back = load_artifact(path).meta.sample()
    assert np.array_equal(back.images, images) and back.keys == ("a", "b") and back.origins == ((0, 0), (4, 2))
    assert back.float_images().dtype == np.float32 and back.fp32_labels is None

    def other_labels(meta):
        meta["validation_sample"] = ValidationSample(images, np.zeros((2, 8, 8), np.uint8), ("a", "b"), ((0, 0), (4, 2))).to_dict()

    _edit_meta(path, other_labels)  # swapping the truth the gate checks against must not go unnoticed
    with pytest.raises(ArtifactError, match="metadata sha256 does not match"):
        load_artifact(path)


def test_garbage_and_missing_files_get_clear_errors(tmp_path):
    with pytest.raises(ArtifactError, match="model artifact not found"):
        load_artifact(tmp_path / "nope.unetkit")
    bad = tmp_path / "bad.unetkit"
    bad.write_bytes(os.urandom(64))
    with pytest.raises(ArtifactError, match="not a"):
        load_artifact(bad)
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file(_state(), str(plain))
    with pytest.raises(ArtifactError, match="without unetkit metadata"):
        load_artifact(plain)


def test_update_rewrites_atomically_with_new_hashes(tmp_path):
    path = save_artifact(tmp_path / "m.unetkit", _state(), _meta())
    before = read_meta(path)
    after = update_artifact(path, temperature=1.7).meta
    assert after.temperature == 1.7 and after.meta_sha256 != before.meta_sha256
    assert after.weights_sha256 == before.weights_sha256


def test_crash_during_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = save_artifact(tmp_path / "m.unetkit", _state(), _meta())
    good = path.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("unetkit.data.atomic.write_all", boom)
    with pytest.raises(StorageError, match="m.unetkit: could not write it .the disk is full."):
        save_artifact(path, _state(), _meta(name="other"))
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["m.unetkit"]


def test_meta_checks_its_own_consistency():
    with pytest.raises(ConfigError, match="mean/std need 1 values"):
        _meta(mean=(1.0, 2.0))
    with pytest.raises(ConfigError, match="2 output channels"):
        _meta(class_names=("a", "b", "c"))
    with pytest.raises(ConfigError, match="temperature"):
        _meta(temperature=0.0)


# ---------------------------------------------------------------- durability (issue 16, case 13)

_SAVE_BIG = """
import torch
from unetkit.artifact import ArtifactMeta, save_artifact
from unetkit.config import ModelConfig
meta = ArtifactMeta(model=ModelConfig(in_channels=1, out_channels=2, base_width=4, depth=2),
                    class_names=("background", "vessel"), mean=(120.0,), std=(40.0,), patch_size=(64, 64))
state = {"a.weight": torch.ones(2_000_000)}  # 8 MB
"""


def test_issue16_case13_a_full_disk_keeps_the_previous_artifact_and_says_so(tmp_path):
    """Before: safetensors' own 'I/O error: File too large' (or torch's 'unexpected pos'); now one clear
    line, and the artifact that was there still loads."""
    from tests.data.test_atomic import run_with_file_size_limit

    path = save_artifact(tmp_path / "m.unetkit", _state(), _meta())
    done = run_with_file_size_limit(_SAVE_BIG + """
from unetkit.errors import StorageError
try:
    save_artifact("m.unetkit", state, meta)
except StorageError as e:
    print(e)
""", limit=1_000_000, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("m.unetkit: could not write it (the file size limit was reached); the previous "
                                   "m.unetkit is unchanged; free some space and try again")
    assert torch.equal(load_artifact(path).state_dict["a.weight"], _state()["a.weight"])
    assert [p.name for p in tmp_path.iterdir()] == ["m.unetkit"]


def test_issue16_case13_sigkill_during_an_artifact_write_leaves_the_old_file_loadable(tmp_path):
    """A child is killed while its new artifact is half written (writes slowed to 1 MB steps so the kill
    lands inside): the old artifact stays whole and loadable; only a `.m.unetkit.*.tmp` remains."""
    import signal
    import subprocess
    import sys

    path = save_artifact(tmp_path / "m.unetkit", _state(), _meta())
    child = subprocess.Popen([sys.executable, "-c", _SAVE_BIG + """
import os, sys, time
import unetkit.data.atomic as atomic
real = os.write
def slow_write(fd, data):
    n = real(fd, data[: 1 << 20])
    print("writing", flush=True)
    time.sleep(0.5)
    return n
atomic.os.write = slow_write
save_artifact("m.unetkit", state, meta)
"""], cwd=tmp_path, stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert child.stdout.readline().strip() == "writing"
        temp = [p for p in tmp_path.iterdir() if p.name.startswith(".m.unetkit.") and p.name.endswith(".tmp")]
        assert len(temp) == 1 and 0 < temp[0].stat().st_size < 8_000_000  # caught mid-write
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(60)
    art = load_artifact(path)
    assert torch.equal(art.state_dict["a.weight"], _state()["a.weight"]) and art.meta.class_names == ("background", "vessel")


def test_the_training_resolution_is_kept_and_covered_by_the_metadata_hash(tmp_path):
    path = save_artifact(tmp_path / "half.unetkit", _state(), _meta(resolution=0.5))
    assert load_artifact(path).meta.resolution == 0.5
    assert load_artifact(save_artifact(tmp_path / "native.unetkit", _state(), _meta())).meta.resolution == 1.0

    def to_native(meta):
        meta["resolution"] = 1.0

    _edit_meta(path, to_native)  # what inference resamples to must not change silently
    with pytest.raises(ArtifactError, match="metadata sha256 does not match"):
        load_artifact(path)
