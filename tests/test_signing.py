"""Artifact signatures: keys, the signed message, and what load_artifact refuses (issue 16, item 10)."""

import json
import os
import struct
from pathlib import Path

import pytest
import torch

from unetkit.artifact import (
    ArtifactMeta,
    artifact_from_bytes,
    load_artifact,
    meta_sha256,
    save_artifact,
    sign_artifact,
    weights_sha256,
)
from unetkit.config import ModelConfig
from unetkit.errors import ArtifactError, ConfigError
from unetkit.signing import SIGNATURE_KEY, TrustPolicy, generate_key, load_private_key, sign, signed_message


def _meta(**kw) -> ArtifactMeta:
    base = dict(model=ModelConfig(in_channels=1, out_channels=2, base_width=4, depth=2),
                class_names=("background", "vessel"), mean=(120.0,), std=(40.0,), patch_size=(64, 64))
    return ArtifactMeta(**(base | kw))


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(4, 3, generator=g), "b.bias": torch.randn(5, generator=g)}


@pytest.fixture()
def keys(tmp_path: Path):
    """A signing key pair in keys/, and trusted/ holding only its public key."""
    made = generate_key(tmp_path / "keys", "release")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    (trusted / "release.pub").write_bytes(made.public.read_bytes())
    return made, trusted


@pytest.fixture()
def signed(tmp_path: Path, keys) -> Path:
    path = save_artifact(tmp_path / "m.unetkit", _state(), _meta())
    sign_artifact(path, keys[0].private)
    return path


def _rewrite_header(path: Path, change) -> None:
    """Edit the safetensors header's __metadata__ in place, keeping the tensor bytes."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8: 8 + n])
    change(header["__metadata__"])
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


def _signature_record(path: Path) -> str:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8: 8 + n])["__metadata__"][SIGNATURE_KEY]


# ---------------------------------------------------------------- keys and the message


def test_generate_writes_a_private_key_only_its_owner_reads(tmp_path):
    made = generate_key(tmp_path / "k", "release")
    assert made.private.stat().st_mode & 0o777 == 0o600
    assert made.public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert len(made.key_id) == 32 and int(made.key_id, 16) >= 0
    policy = TrustPolicy.load(made.public)
    assert list(policy.keys) == [made.key_id]  # the id is the key's fingerprint, not its file name
    with pytest.raises(ConfigError, match="already exists"):
        generate_key(tmp_path / "k", "release")


def test_a_private_key_readable_by_others_is_refused(tmp_path):
    made = generate_key(tmp_path, "release")
    os.chmod(made.private, 0o644)
    with pytest.raises(ConfigError, match="accessible by others .*chmod 600"):
        load_private_key(made.private)


def test_changing_the_weights_or_the_metadata_digest_breaks_the_signature(keys):
    made, trusted = keys
    policy = TrustPolicy.load(trusted, required=True)
    w, m = "a" * 64, "b" * 64
    record = json.dumps(sign(load_private_key(made.private), signed_message(w, m)))
    assert policy.check("m", record, signed_message(w, m)) == made.key_id
    assert signed_message(w, m) == f"unetkit-artifact-signature-v1\nweights_sha256 {w}\nmeta_sha256 {m}\n".encode()
    for other in (signed_message("c" * 64, m), signed_message(w, "c" * 64)):
        with pytest.raises(ArtifactError, match="does not match the weights and metadata"):
            policy.check("m", record, other)


def test_trusted_keys_must_exist_and_required_needs_them(tmp_path):
    with pytest.raises(ConfigError, match="require_signature: needs trusted keys"):
        TrustPolicy.load("", required=True)
    assert TrustPolicy.load("") is None
    with pytest.raises(ConfigError, match="not found"):
        TrustPolicy.load(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"no trusted public keys \(\*.pub\)"):
        TrustPolicy.load(tmp_path)


# ---------------------------------------------------------------- signed artifacts


def test_sign_then_verify(signed, keys):
    made, trusted = keys
    art = load_artifact(signed, trust=TrustPolicy.load(trusted, required=True))
    assert art.signer == made.key_id
    assert torch.equal(art.state_dict["a.weight"], _state()["a.weight"])
    # signing changes neither hash a verifier computes
    assert art.meta.weights_sha256 == weights_sha256(_state()) and meta_sha256(art.meta) == art.meta.meta_sha256
    assert load_artifact(signed).signer == ""  # no trust policy: nothing was verified


def test_signing_keeps_what_is_hashed(tmp_path, keys):
    path = save_artifact(tmp_path / "m.unetkit", _state(), _meta())
    before = load_artifact(path).meta
    sign_artifact(path, keys[0].private)
    assert load_artifact(path).meta == before


def test_tampered_weights_are_refused_by_the_signature(signed, keys):
    """Weights edited and the recorded hashes recomputed (what corruption checks cannot catch), the old
    signature copied over: the signature no longer matches."""
    record = _signature_record(signed)
    edited = load_artifact(signed)
    state = {k: v.clone() for k, v in edited.state_dict.items()}
    state["b.bias"][0] += 1.0
    save_artifact(signed, state, edited.meta)
    _rewrite_header(signed, lambda md: md.__setitem__(SIGNATURE_KEY, record))
    load_artifact(signed)  # the embedded hashes are consistent: corruption checks pass
    with pytest.raises(ArtifactError, match=r"m.unetkit: the signature by key [0-9a-f]{32} does not match the weights"):
        load_artifact(signed, trust=TrustPolicy.load(keys[1], required=True))


def test_tampered_metadata_is_refused_by_the_signature(signed, keys):
    record = _signature_record(signed)
    edited = load_artifact(signed)
    save_artifact(signed, edited.state_dict, edited.meta.__class__(**{**edited.meta.__dict__, "mean": (0.0,)}))
    _rewrite_header(signed, lambda md: md.__setitem__(SIGNATURE_KEY, record))
    with pytest.raises(ArtifactError, match="does not match the weights and metadata"):
        load_artifact(signed, trust=TrustPolicy.load(keys[1]))  # a signature present must verify, required or not


def test_a_re_saved_edited_artifact_is_refused_when_signatures_are_required(signed, keys):
    art = load_artifact(signed)
    state = {k: v * 2 for k, v in art.state_dict.items()}
    save_artifact(signed, state, art.meta)  # a plain re-save: hashes recomputed, signature gone
    assert load_artifact(signed).meta.weights_sha256 == weights_sha256(state)
    with pytest.raises(ArtifactError, match=r"m.unetkit: not signed, and a signature by a trusted key .* is required"):
        load_artifact(signed, trust=TrustPolicy.load(keys[1], required=True))


def test_a_signature_by_another_key_is_refused(tmp_path, signed, keys):
    other = generate_key(tmp_path / "other", "other")
    with pytest.raises(ArtifactError, match=r"signed by key [0-9a-f]{32}, which is not a trusted key"):
        load_artifact(signed, trust=TrustPolicy.load(other.public, required=True))


def test_unsigned_is_refused_only_when_required(tmp_path, keys):
    path = save_artifact(tmp_path / "u.unetkit", _state(), _meta())
    assert load_artifact(path, trust=TrustPolicy.load(keys[1])).signer == ""
    with pytest.raises(ArtifactError, match="not signed"):
        load_artifact(path, trust=TrustPolicy.load(keys[1], required=True))


def test_a_damaged_signature_record_is_a_clear_error(signed, keys):
    _rewrite_header(signed, lambda md: md.__setitem__(SIGNATURE_KEY, "{not json"))
    with pytest.raises(ArtifactError, match="signature record .* is unreadable"):
        load_artifact(signed, trust=TrustPolicy.load(keys[1]))


def test_sha256_pin(signed):
    import hashlib

    digest = hashlib.sha256(signed.read_bytes()).hexdigest()
    assert load_artifact(signed, sha256=digest.upper()).path == signed
    with pytest.raises(ArtifactError, match=r"m.unetkit: sha256 [0-9a-f]{12}… is not the pinned 000000000000…"):
        load_artifact(signed, sha256="0" * 64)
    with pytest.raises(ArtifactError, match="expected 64 hex digits"):
        load_artifact(signed, sha256="abc")


def test_what_is_loaded_is_what_was_hashed(signed, keys, monkeypatch):
    """The file is swapped between the checks and the tensor load: the swapped bytes are never used."""
    import hashlib

    import safetensors.torch

    digest = hashlib.sha256(signed.read_bytes()).hexdigest()
    swapped = save_artifact(signed.parent / "evil.unetkit", _state(seed=9), _meta())
    real_load = safetensors.torch.load

    def swap_then_load(data):
        os.replace(swapped, signed)  # an attacker wins the race right after the hash check
        return real_load(data)

    monkeypatch.setattr(safetensors.torch, "load", swap_then_load)
    art = load_artifact(signed, sha256=digest, trust=TrustPolicy.load(keys[1], required=True))
    assert torch.equal(art.state_dict["a.weight"], _state()["a.weight"])
    assert not torch.equal(art.state_dict["a.weight"], _state(seed=9)["a.weight"])


def test_garbage_bytes_are_refused_before_parsing(tmp_path):
    with pytest.raises(ArtifactError, match="unreadable safetensors header"):
        artifact_from_bytes(b"\xff" * 64, tmp_path / "x.unetkit")


# ---------------------------------------------------------------- the command line


def test_cli_keys_sign_verify(tmp_path):
    from tests.test_cli import assert_one_line_error, run_cli

    made = run_cli("keys", "generate", "--out", str(tmp_path / "keys"), "--name", "release")
    assert made.returncode == 0 and "key " in made.stdout, made.stderr
    assert (tmp_path / "keys" / "release.key").stat().st_mode & 0o777 == 0o600
    path = save_artifact(tmp_path / "m.unetkit", _state(), _meta())
    proc = run_cli("verify", str(path), "--trusted-keys", str(tmp_path / "keys"))
    assert proc.returncode == 2
    assert_one_line_error(proc, "m.unetkit: not signed, and a signature by a trusted key")
    signed = run_cli("sign", str(path), "--key", str(tmp_path / "keys" / "release.key"))
    assert signed.returncode == 0, signed.stderr
    ok = run_cli("verify", str(path), "--trusted-keys", str(tmp_path / "keys" / "release.pub"))
    assert ok.returncode == 0 and "signed by trusted key" in ok.stdout, ok.stderr


def test_cli_refuses_unsigned_models_in_one_line(tmp_path):
    from tests.test_cli import assert_one_line_error, run_cli

    keys = generate_key(tmp_path / "keys", "release")
    path = save_artifact(tmp_path / "m.unetkit", _state(), _meta())
    trusted = ["--trusted-keys", str(keys.public), "--require-signature"]
    for args in (["predict", str(path), str(tmp_path), "--out", str(tmp_path / "out"), *trusted],
                 ["serve", str(path), "--port", "1", *trusted],  # refused before it listens
                 ["registry", "add", str(path), "--registry", str(tmp_path / "reg.db"), *trusted]):
        proc = run_cli(*args)
        assert proc.returncode == 2, (args[0], proc.stderr)
        assert_one_line_error(proc, "m.unetkit: not signed, and a signature by a trusted key")
    pinned = run_cli("serve", str(path), "--port", "1", "--sha256", "0" * 64)
    assert pinned.returncode == 2
    assert_one_line_error(pinned, "m.unetkit: sha256")
