"""Serving signed artifacts (issue 16, item 10): with require_signature the server refuses to start on an
unsigned, untrusted or re-saved model; `sha256` pins the file; a registry version is verified from the
bytes that were hashed."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from unetkit.artifact import load_artifact, save_artifact, sign_artifact
from unetkit.config import ServeConfig
from unetkit.errors import ArtifactError, ConfigError
from unetkit.registry.registry import Registry
from unetkit.serve.follow import RegistryFollower
from unetkit.serve.server import check_before_start, env_values, load_serve_config
from unetkit.serve.service import Service
from unetkit.signing import generate_key


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("keys")
    made = generate_key(root / "private", "release")
    trusted = root / "trusted"
    trusted.mkdir()
    shutil.copyfile(made.public, trusted / "release.pub")
    return made, trusted


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, artifact_path: Path, keys) -> Path:
    path = tmp_path_factory.mktemp("signed") / "signed.unetkit"
    shutil.copyfile(artifact_path, path)
    sign_artifact(path, keys[0].private)
    return path


def test_settings_come_from_the_environment_too():
    values = env_values({"UNETKIT_SERVE_TRUSTED_KEYS": "/keys", "UNETKIT_SERVE_REQUIRE_SIGNATURE": "true",
                         "UNETKIT_SERVE_SHA256": "ab" * 32})
    assert values == {"trusted_keys": "/keys", "require_signature": True, "sha256": "ab" * 32}
    cfg = load_serve_config(None, env={"UNETKIT_SERVE_REQUIRE_SIGNATURE": "1"}, trusted_keys="/k")
    assert cfg.require_signature and cfg.trusted_keys == "/k"


def test_the_server_refuses_to_start_on_an_unsigned_artifact(artifact_path, keys):
    config = ServeConfig(artifact=str(artifact_path), trusted_keys=str(keys[1]), require_signature=True)
    with pytest.raises(ArtifactError, match=r"primary.unetkit: not signed, and a signature by a trusted key"):
        check_before_start(config)
    with pytest.raises(ArtifactError, match="not signed"):
        Service.from_artifact(artifact_path, config)  # the same check where the model loads


def test_the_server_refuses_an_untrusted_signer_and_a_re_saved_artifact(signed, keys, tmp_path):
    other = generate_key(tmp_path / "other", "other")
    with pytest.raises(ArtifactError, match="which is not a trusted key"):
        check_before_start(ServeConfig(artifact=str(signed), trusted_keys=str(other.public), require_signature=True))
    art = load_artifact(signed)
    edited = save_artifact(tmp_path / "edited.unetkit", {k: v * 1.01 for k, v in art.state_dict.items()}, art.meta)
    with pytest.raises(ArtifactError, match="edited.unetkit: not signed"):
        check_before_start(ServeConfig(artifact=str(edited), trusted_keys=str(keys[1]), require_signature=True))


def test_require_signature_without_trusted_keys_is_a_config_error(artifact_path):
    with pytest.raises(ConfigError, match="require_signature: needs trusted keys"):
        check_before_start(ServeConfig(artifact=str(artifact_path), require_signature=True))


def test_a_signed_artifact_is_served(signed, keys):
    config = ServeConfig(artifact=str(signed), trusted_keys=str(keys[1]), require_signature=True)
    check_before_start(config)
    service = Service.from_artifact(signed, config)
    try:
        assert service.primary.meta.name == "tiny"
    finally:
        service.close()


def test_sha256_pins_the_served_file(signed, artifact_path):
    digest = hashlib.sha256(signed.read_bytes()).hexdigest()
    check_before_start(ServeConfig(artifact=str(signed), sha256=digest))
    with pytest.raises(ArtifactError, match=r"primary.unetkit: sha256 .* is not the pinned"):
        check_before_start(ServeConfig(artifact=str(artifact_path), sha256=digest))
    with pytest.raises(ArtifactError, match="is not the pinned"):
        Service.from_artifact(artifact_path, ServeConfig(sha256=digest))


def test_a_registry_stage_is_verified_before_start_and_on_load(tmp_path, artifact_path, signed, keys):
    location = str(tmp_path / "reg" / "registry.db")
    with Registry.open(location) as registry:
        registry.add(artifact_path, stage="production")
    config = ServeConfig(registry=location, trusted_keys=str(keys[1]), require_signature=True)
    with pytest.raises(ArtifactError, match="tiny:1: .*not signed"):
        check_before_start(config)
    follower = RegistryFollower.open(config)
    try:
        with pytest.raises(ArtifactError, match="tiny:1: .*not signed"):
            follower.load_service(follower.observer)
    finally:
        follower.stop()
    with pytest.raises(ConfigError, match="sha256 pins an artifact file"):
        check_before_start(ServeConfig(registry=location, sha256="ab" * 32))


def test_an_exported_model_is_checked_before_start_and_refused_under_a_trust_policy(artifact_path, keys, tmp_path):
    from unetkit.export.onnx import export_artifact

    exported = export_artifact(shutil.copyfile(artifact_path, tmp_path / "model.unetkit")).model_path
    check_before_start(ServeConfig(artifact=str(exported)))  # the model and its plan are a pair
    with pytest.raises(ConfigError, match="model.onnx: signatures and sha256 pins cover model artifacts"):
        check_before_start(ServeConfig(artifact=str(exported), trusted_keys=str(keys[1]), require_signature=True))
    exported.with_name("model.onnx.json").unlink()
    with pytest.raises(ArtifactError, match="model.onnx: its inference plan model.onnx.json is missing"):
        check_before_start(ServeConfig(artifact=str(exported)))
