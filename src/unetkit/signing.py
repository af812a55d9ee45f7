"""Ed25519 signatures over a model artifact: who vouches for these weights and this metadata.

The artifact's own sha256 fields (artifact.py) detect corruption only: whoever edits a file can
recompute them (`save_artifact` does). A signature detects tampering: only the holder of the private
key can make one, and a verifier accepts only the public keys it was given (`--trusted-keys DIR`).

What is signed (format v1) is the UTF-8 bytes of three lines, each ending in "\\n":

    unetkit-artifact-signature-v1
    weights_sha256 <W>
    meta_sha256 <M>

W is `artifact.weights_sha256`: sha256 over the tensors in name order, each as its name, dtype, shape
and raw bytes. M is `artifact.meta_sha256`: sha256 of the metadata as canonical JSON (every
ArtifactMeta field but meta_sha256, keys sorted, separators "," and ":"; an empty
`validation_sample` is left out, as artifacts written before it existed have none). The validation
sample the parity gate checks reduced precisions on is metadata, so it is signed too. The verifier computes both
from the bytes it loaded, never takes them from the file; so a change to any tensor or any metadata
value breaks the signature. The first line keeps a signature made over anything else from passing.

Where it lives: a second safetensors metadata key, `unetkit.signature`, beside `unetkit`, holding
{"algorithm": "ed25519", "key_id": ..., "signature": base64}. A detached MODEL.sig would leave the
file's bytes alone, but the artifact is the one file every stage needs (registry blobs, images, copies)
and a detached file gets lost on the way; embedded, the signature travels with it. It sits outside what
is signed, so signing changes neither W nor M. It does change the file's bytes, so pin (`--sha256`) or
register the signed file. Any rewrite (save_artifact, update_artifact: calibrate, tune, baseline)
drops the signature: sign again afterwards. Other safetensors metadata keys are not covered; unetkit
reads none.

Keys: `generate_key(folder, name)` writes NAME.key (PKCS#8 PEM, mode 0600) and NAME.pub
(SubjectPublicKeyInfo PEM). A key id is the key's fingerprint: the first 32 hex digits of the
sha256 of its 32 raw public-key bytes. `TrustPolicy.load(folder, required)` trusts every *.pub in a
folder (or one .pub file).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from unetkit.errors import ArtifactError, ConfigError

SIGNATURE_KEY = "unetkit.signature"  # the safetensors metadata key holding the signature record
ALGORITHM = "ed25519"
MESSAGE_HEADER = "unetkit-artifact-signature-v1"


def signed_message(weights_sha256: str, meta_sha256: str) -> bytes:
    """The exact bytes a signature covers (see the module docstring)."""
    return f"{MESSAGE_HEADER}\nweights_sha256 {weights_sha256}\nmeta_sha256 {meta_sha256}\n".encode()


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


# ---------------------------------------------------------------- keys


@dataclass(frozen=True)
class KeyFiles:
    private: Path
    public: Path
    key_id: str


def generate_key(folder: str | Path, name: str = "unetkit") -> KeyFiles:
    """A new key pair: FOLDER/NAME.key (private, 0600) and FOLDER/NAME.pub; refuses to overwrite."""
    folder = Path(folder)
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"key name {name!r}: expected a plain file name such as 'release'")
    private_path, public_path = folder / f"{name}.key", folder / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path}: already exists; choose another --name or folder (keys are never overwritten)")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(public_pem)
    return KeyFiles(private_path, public_path, key_id(key.public_key()))


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file that only its owner can read (as ssh insists)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the signing key ({e.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path}: private key is accessible by others (mode {stat.S_IMODE(mode):04o}); "
                          f"run: chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path}: not an unencrypted PEM private key ({e}); make one with `unetkit keys generate`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: a {type(key).__name__}, expected an Ed25519 key (`unetkit keys generate`)")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the public key ({e.strerror})") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise ConfigError(f"{path}: not a PEM public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: a {type(key).__name__}, expected an Ed25519 public key")
    return key


def sign(key: Ed25519PrivateKey, message: bytes) -> dict[str, str]:
    """The signature record stored under SIGNATURE_KEY."""
    return {"algorithm": ALGORITHM, "key_id": key_id(key.public_key()),
            "signature": base64.b64encode(key.sign(message)).decode()}


# ---------------------------------------------------------------- verification


@dataclass(frozen=True)
class TrustPolicy:
    """Which keys a verifier trusts, and whether an unsigned artifact is refused.

    With `required`, an artifact must carry a signature by one of `keys`. Without it, an unsigned
    artifact is accepted, but a signature that is there must still verify with a trusted key."""

    keys: Mapping[str, Ed25519PublicKey]  # key id -> public key
    required: bool = False
    source: str = ""  # where the keys came from, for messages

    @classmethod
    def load(cls, trusted_keys: str | Path | None, required: bool = False) -> TrustPolicy | None:
        """The policy for `--trusted-keys DIR` (a folder of *.pub files, or one .pub file); None
        when no keys are given and none are required (signatures are then not checked)."""
        if not trusted_keys:
            if required:
                raise ConfigError("require_signature: needs trusted keys (--trusted-keys DIR: a folder of *.pub "
                                  "Ed25519 public keys, made by `unetkit keys generate`)")
            return None
        source = Path(trusted_keys)
        if source.is_dir():
            files = sorted(source.glob("*.pub"))
        elif source.is_file():
            files = [source]
        else:
            raise ConfigError(f"{source}: trusted keys not found (expected a folder of *.pub files or one .pub file)")
        if not files:
            raise ConfigError(f"{source}: no trusted public keys (*.pub) in this folder")
        keys = {}
        for path in files:
            public = load_public_key(path)
            keys[key_id(public)] = public
        return cls(keys, required, str(source))

    def check(self, where: str, record: str | None, message: bytes) -> str:
        """The signer's key id ('' for an unsigned artifact this policy accepts); ArtifactError otherwise."""
        if record is None:
            if self.required:
                raise ArtifactError(f"{where}: not signed, and a signature by a trusted key ({self.source}) is required; "
                                    f"sign it with `unetkit sign {where} --key KEY`")
            return ""
        algorithm, signer, signature = parse_record(where, record)
        if algorithm != ALGORITHM:
            raise ArtifactError(f"{where}: signature algorithm {algorithm!r} is not supported (expected {ALGORITHM})")
        public = self.keys.get(signer)
        if public is None:
            raise ArtifactError(f"{where}: signed by key {signer}, which is not a trusted key "
                                f"({self.source}: {', '.join(sorted(self.keys))})")
        try:
            public.verify(signature, message)
        except InvalidSignature:
            raise ArtifactError(f"{where}: the signature by key {signer} does not match the weights and metadata; "
                                "the file was changed after it was signed — refusing it") from None
        return signer


def parse_record(where: str, record: str) -> tuple[str, str, bytes]:
    """(algorithm, key id, signature bytes) of a stored signature record."""
    try:
        data = json.loads(record)
        return str(data["algorithm"]), str(data["key_id"]), base64.b64decode(data["signature"], validate=True)
    except (json.JSONDecodeError, KeyError, TypeError, binascii.Error):
        raise ArtifactError(f"{where}: the signature record ({SIGNATURE_KEY}) is unreadable; the file is damaged") from None
