"""Signed artifacts in the registry (issue 16, item 10): add/promote with trusted keys record the signer
and refuse what is not signed by one; what is loaded is the bytes that were hashed."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import unetkit.registry.registry as registry_module
from unetkit.artifact import load_artifact, save_artifact, sign_artifact
from unetkit.errors import ArtifactError, RegistryError
from unetkit.registry.blobs import BlobStore
from unetkit.signing import TrustPolicy, generate_key


@pytest.fixture()
def signer(tmp_path: Path):
    return generate_key(tmp_path / "keys", "release")


@pytest.fixture()
def trust(signer) -> TrustPolicy:
    return TrustPolicy.load(signer.public, required=True)


@pytest.fixture()
def signed(tmp_path: Path, artifacts, signer) -> Path:
    path = tmp_path / "signed.unetkit"
    shutil.copyfile(artifacts["base"], path)
    sign_artifact(path, signer.private)
    return path


def test_add_with_trusted_keys_records_the_signer(registry, signed, signer, trust):
    result = registry.add(signed, trust=trust)
    assert result.record.signer == signer.key_id and result.record.meta["signer"] == signer.key_id
    assert registry.history("tiny", 1)[0].details == {"signer": signer.key_id}
    assert registry.load("tiny:1", trust).signer == signer.key_id


def test_add_refuses_an_unsigned_or_re_saved_artifact_when_signatures_are_required(registry, artifacts, signed, trust,
                                                                                   tmp_path):
    with pytest.raises(ArtifactError, match="not signed, and a signature by a trusted key .* is required"):
        registry.add(artifacts["base"], trust=trust)
    art = load_artifact(signed)
    edited = save_artifact(tmp_path / "edited.unetkit", {k: v + 1 for k, v in art.state_dict.items()}, art.meta)
    with pytest.raises(ArtifactError, match="edited.unetkit.*not signed"):
        registry.add(edited, trust=trust)
    assert registry.list() == [] and registry.store.stored() == {}
    assert registry.add(artifacts["base"], trust=TrustPolicy(trust.keys)).record.signer == ""  # not required: accepted


def test_add_refuses_a_signature_by_an_untrusted_key(registry, signed, tmp_path):
    other = TrustPolicy.load(generate_key(tmp_path / "other", "other").public, required=True)
    with pytest.raises(ArtifactError, match="which is not a trusted key"):
        registry.add(signed, trust=other)


def test_promote_with_trusted_keys_checks_and_records_the_signer(registry, artifacts, signed, signer, trust):
    registry.add(signed)  # registered without a check: no signer recorded
    registry.add(artifacts["better"])
    assert registry.get("tiny:1").signer == ""
    promotion = registry.promote("tiny:1", "production", trust=trust)
    assert promotion.record.stage == "production"
    assert registry.history("tiny", 1)[-1].details["signer"] == signer.key_id
    with pytest.raises(ArtifactError, match="tiny:2: .*not signed"):
        registry.promote("tiny:2", "production", trust=trust)
    assert registry.get("tiny:2").stage == "candidate"


def test_load_uses_the_bytes_it_hashed(registry, artifacts, monkeypatch):
    """The blob is swapped after its sha256 was checked and before the tensors are read: the swapped file
    is never used (before: fetch hashed the path, then load_artifact opened the path again)."""
    record = registry.add(artifacts["base"]).record
    blob = registry.store.path(record.sha256)
    real = registry_module.artifact_from_bytes

    def swap_then_parse(data, path, **kwargs):
        shutil.copyfile(artifacts["worse"], blob)  # the attacker's file lands between check and load
        return real(data, path, **kwargs)

    monkeypatch.setattr(registry_module, "artifact_from_bytes", swap_then_parse)
    loaded = registry.load(record)
    expected = load_artifact(artifacts["base"]).state_dict
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in expected.items())
    assert loaded.meta.metrics["mean_iou"] == 0.70  # not the swapped-in "worse" model's 0.68


def test_add_refuses_a_staged_copy_swapped_after_it_was_hashed(registry, artifacts, monkeypatch):
    real_stage = BlobStore.stage

    @contextmanager
    def stage_then_swap(self, source):
        with real_stage(self, source) as blob:
            shutil.copyfile(artifacts["worse"], blob.path)  # replaced after the copy was hashed
            yield blob

    monkeypatch.setattr(BlobStore, "stage", stage_then_swap)
    with pytest.raises(ArtifactError, match="base.unetkit: sha256 .* is not the pinned"):
        registry.add(artifacts["base"])
    assert registry.list() == []


def test_a_promotion_refuses_a_ref_that_moved_while_its_signature_was_checked(registry, signed, artifacts, trust,
                                                                              monkeypatch):
    registry.add(signed)
    real = registry.load

    def load_then_add(ref, trust=None):
        loaded = real(ref, trust)
        registry.add(artifacts["better"])  # tiny:latest now names tiny:2
        return loaded

    monkeypatch.setattr(registry, "load", load_then_add)
    with pytest.raises(RegistryError, match="now names another version"):
        registry.promote("tiny:latest", "staging", trust=trust)
