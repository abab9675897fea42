"""Signed bundles: keygen, sign, verify; tampered manifests and members, wrong keys, links, swaps after load."""

from __future__ import annotations

import json
import os
import shutil
import stat

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_guard import Guard
from edge_guard.bundle import load_bundle
from edge_guard.cli import app
from edge_guard.errors import BundleError
from edge_guard.signing import SIGNATURE_NAME, generate_keys, sign_bundle, verify_bundle
from tests.onnx_fixtures import make_bundle, solid

RED = (220, 20, 20)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    return generate_keys(root / "a"), generate_keys(root / "b")


@pytest.fixture
def signed(tmp_path, keys):
    root = make_bundle(tmp_path / "b")
    sign_bundle(root, keys[0].private)
    return root


def test_keygen_writes_a_private_key_only_its_owner_reads(keys):
    private = keys[0].private
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600 and keys[0].public.read_text().startswith("-----BEGIN")
    assert keys[0].key_id != keys[1].key_id and len(keys[0].key_id) == 16


def test_a_signed_bundle_verifies_and_classifies(signed, keys):
    assert verify_bundle(signed, [keys[1].public, keys[0].public]) == keys[0].key_id
    guard = Guard.from_bundle(signed, trusted_keys=[keys[0].public], threads=1)
    assert guard.bundle.signed_by == keys[0].key_id and guard.classify(solid(RED))[0].class_name == "red"


def test_a_tampered_manifest_is_refused(signed, keys):
    manifest = json.loads((signed / "manifest.json").read_text())
    manifest["defense"]["kind"] = "none"  # switch the defense off: still a valid manifest
    (signed / "manifest.json").write_text(json.dumps(manifest))
    assert load_bundle(signed).defense.kind == "none"  # unsigned loading cannot tell ...
    with pytest.raises(BundleError, match="does not verify with any trusted key"):
        verify_bundle(signed, [keys[0].public])  # ... the signature can


def test_swapped_class_names_and_a_replaced_member_rehashed_are_refused(signed, keys, tmp_path):
    other = make_bundle(tmp_path / "other", classes=("green", "red", "blue", "other"))
    manifest = json.loads((signed / "manifest.json").read_text())
    manifest["classes"] = ["green", "red", "blue", "other"]
    shutil.copy(other / "m0.onnx", signed / "m0.onnx")
    manifest["members"][0]["sha256"] = json.loads((other / "manifest.json").read_text())["members"][0]["sha256"]
    (signed / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(BundleError, match="does not verify"):
        load_bundle(signed, trusted_keys=[keys[0].public])


def test_a_tampered_member_is_refused_even_with_a_valid_signature(signed, keys):
    path = signed / "m1.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="m1.onnx: sha256 mismatch"):
        load_bundle(signed, trusted_keys=[keys[0].public])


def test_wrong_key_and_missing_signature(signed, keys, tmp_path):
    with pytest.raises(BundleError, match=rf"signed by key {keys[0].key_id}"):
        load_bundle(signed, trusted_keys=[keys[1].public])
    unsigned = make_bundle(tmp_path / "unsigned")
    with pytest.raises(BundleError, match=r"expected a signed bundle \(signature.json\), got no signature"):
        load_bundle(unsigned, require_signed=True, trusted_keys=[keys[0].public])
    (signed / SIGNATURE_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="expected an ed25519 signature record"):
        load_bundle(signed, trusted_keys=[keys[0].public])


def test_a_member_linked_to_a_model_outside_the_bundle_is_refused(tmp_path):
    root = make_bundle(tmp_path / "b")
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(root / "m2.onnx", outside)
    (root / "m2.onnx").symlink_to(outside)  # same bytes, same sha256: only the location gives it away
    with pytest.raises(BundleError, match=r"members\[2\]\.file: expected a file inside the bundle folder"):
        load_bundle(root)


def test_a_member_swapped_on_disk_after_loading_does_not_change_the_sessions(tmp_path):
    root = make_bundle(tmp_path / "b")
    bundle = load_bundle(root)
    other = make_bundle(tmp_path / "other", classes=("green", "red", "blue", "other"))
    for name in ("m0.onnx", "m1.onnx", "m2.onnx"):  # swapped between the hash check and the session
        shutil.copy(other / name, root / name)
    from edge_guard.engine import Engine

    guard = Guard(bundle, Engine(bundle, intra_op_threads=1))
    assert guard.classify(solid(RED))[0].class_name == "red"  # the verified bytes, not the new files
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_bundle(root)  # a reload verifies again and refuses the swapped files


def test_cli_keygen_sign_verify(tmp_path):
    runner = CliRunner()
    root = make_bundle(tmp_path / "b")
    assert runner.invoke(app, ["keygen", "--out", str(tmp_path / "k")]).exit_code == 0
    assert runner.invoke(app, ["keygen", "--out", str(tmp_path / "k")]).exit_code == 2  # never overwrite silently
    assert runner.invoke(app, ["sign", str(root), "--key", str(tmp_path / "k" / "edgeguard.key")]).exit_code == 0
    ok = runner.invoke(app, ["verify", str(root), "--pubkey", str(tmp_path / "k" / "edgeguard.pub")])
    assert ok.exit_code == 0 and "verified" in ok.output
    generate_keys(tmp_path / "k2")
    bad = runner.invoke(app, ["verify", str(root), "--pubkey", str(tmp_path / "k2" / "edgeguard.pub")])
    assert bad.exit_code == 2 and bad.output.startswith("error: ") and len(bad.output.strip().splitlines()) == 1
    image = tmp_path / "red.png"
    import cv2

    cv2.imwrite(str(image), np.ascontiguousarray(solid(RED)[..., ::-1]))
    refused = runner.invoke(app, ["infer", str(image), "--bundle", str(root), "--trusted-key",
                                  str(tmp_path / "k2" / "edgeguard.pub")])
    assert refused.exit_code == 2 and "does not verify" in refused.stderr
    served = runner.invoke(app, ["infer", str(image), "--bundle", str(root), "--trusted-key",
                                 str(tmp_path / "k" / "edgeguard.pub")])
    assert served.exit_code == 0, served.output
