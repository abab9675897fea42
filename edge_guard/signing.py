"""Signed bundles: an ed25519 signature over manifest.json, which pins the sha256 of every file of the bundle.

    keys = generate_keys("keys/")                    # keys/edgeguard.key (private, 0600) + keys/edgeguard.pub
    sign_bundle("export/gtsrb-shield", keys.private)  # writes export/gtsrb-shield/signature.json
    verify_bundle("export/gtsrb-shield", [keys.public])  # BundleError unless a trusted key signed these bytes

The signature is over the exact bytes of manifest.json; since the manifest lists every member's
sha256 and `load_bundle` checks them, a valid signature vouches for the whole bundle: its defense,
its class names and every graph. Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public).
`cryptography` (pyca) does the ed25519 arithmetic: a well-kept library, not hand-rolled crypto.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_guard.errors import BundleError, ConfigError, expected_got

SIGNATURE_NAME = "signature.json"
ALGORITHM = "ed25519"
PRIVATE_NAME, PUBLIC_NAME = "edgeguard.key", "edgeguard.pub"


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key_id: str


def key_id(public: Ed25519PublicKey) -> str:
    """The first 16 hex digits of the sha256 of the raw 32-byte public key: names a key in signature.json."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keys(folder: str | Path, *, overwrite: bool = False) -> KeyPair:
    """Write a new ed25519 key pair into `folder` (the private key readable by its owner only)."""
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    private_path, public_path = folder / PRIVATE_NAME, folder / PUBLIC_NAME
    if private_path.exists() and not overwrite:
        raise ConfigError(expected_got("keygen --out", "a folder without a key", f"{private_path} (exists)",
                                       "Choose another folder, or pass --overwrite to replace the key."))
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        private_path.unlink(missing_ok=True)  # a fresh file: O_EXCL below gives it mode 0600, never an old mode
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    except OSError as exc:
        raise ConfigError(expected_got("keygen --out", "a writable folder", f"{folder} ({exc.strerror or exc})")) \
            from None
    return KeyPair(private_path, public_path, key_id(key.public_key()))


def _read_key(path: str | Path, private: bool) -> Ed25519PrivateKey | Ed25519PublicKey:
    path = Path(path).expanduser()
    what = "private key" if private else "public key"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(expected_got(what, "a readable PEM file", f"{path} ({exc.strerror or exc})")) from None
    try:
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (ValueError, TypeError) as exc:
        raise ConfigError(expected_got(what, "an ed25519 PEM key (edgeguard keygen)", f"{path} ({exc})")) from None
    wanted = Ed25519PrivateKey if private else Ed25519PublicKey
    if not isinstance(key, wanted):
        raise ConfigError(expected_got(what, "an ed25519 key", f"{path} ({type(key).__name__})"))
    return key


def read_public_keys(paths: Sequence[str | Path]) -> list[Ed25519PublicKey]:
    return [_read_key(p, private=False) for p in paths]  # type: ignore[misc]


def sign_bundle(bundle_dir: str | Path, private_key: str | Path) -> Path:
    """Sign the bundle's manifest.json (after checking the bundle loads and its hashes match); returns the
    signature file."""
    from edge_guard.bundle import MANIFEST_NAME, load_bundle

    root = load_bundle(bundle_dir).root  # only a bundle that verifies is worth signing
    key = _read_key(private_key, private=True)
    manifest = (root / MANIFEST_NAME).read_bytes()
    record = {"algorithm": ALGORITHM, "key_id": key_id(key.public_key()),  # type: ignore[union-attr]
              "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
              "signature": base64.b64encode(key.sign(manifest)).decode()}  # type: ignore[union-attr]
    path = root / SIGNATURE_NAME
    try:
        path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise BundleError(expected_got("sign", f"a writable bundle folder {root}", exc.strerror or str(exc))) from None
    return path


def check_signature(root: Path, manifest: bytes, trusted: Sequence[Ed25519PublicKey]) -> str:
    """Verify signature.json in `root` over `manifest` (the bytes that were loaded) with one of the trusted
    keys; returns the signing key's id. BundleError when unsigned, malformed, or signed by no trusted key."""
    path = root / SIGNATURE_NAME
    fix = "Sign it with `edgeguard sign BUNDLE --key KEY` (the key whose .pub the device trusts)."
    if not path.is_file():
        raise BundleError(expected_got(f"{root}", f"a signed bundle ({SIGNATURE_NAME})", "no signature", fix))
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        signature = base64.b64decode(record["signature"], validate=True)
        if record.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm {record.get('algorithm')!r}")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise BundleError(expected_got(str(path), "an ed25519 signature record",
                                       f"unreadable ({type(exc).__name__})", fix)) from None
    if not trusted:
        raise BundleError(expected_got("trusted keys", "at least one public key", "none",
                                       "Pass --trusted-key PUB (edgeguard keygen writes edgeguard.pub)."))
    for public in trusted:
        try:
            public.verify(signature, manifest)
        except InvalidSignature:
            continue
        return key_id(public)
    ids = ", ".join(key_id(k) for k in trusted)
    raise BundleError(f"{root}: the signature does not verify with any trusted key ({ids}; signed by key "
                      f"{record.get('key_id', '?')}): manifest.json was changed after signing, or another key "
                      "signed it. Re-sign it, or trust the right key.")


def verify_bundle(bundle_dir: str | Path, public_keys: Sequence[str | Path]) -> str:
    """Load the bundle requiring a signature by one of `public_keys` (files); returns the key id."""
    from edge_guard.bundle import load_bundle

    bundle = load_bundle(bundle_dir, trusted_keys=public_keys, require_signed=True)
    return bundle.signed_by or ""
