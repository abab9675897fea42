"""Write a bundle directory: member ONNX files (with metadata_props), optional fused graph, manifest.json.

The manifest follows `edge_guard.bundle`'s schema (format_version 1) and is validated, with every
file's sha256, by `edge_guard.bundle.write_manifest` before it is written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec
import onnx

from edge_guard.bundle import FORMAT_VERSION, BundleMember, FusedSpec, Manifest, Provenance, sha256_file, write_manifest
from edge_guard.spec import DefenseSpec, InputSpec, VoteRule
from edge_guard.training.export.graph_ops import set_metadata
from edge_guard.training.provenance import versions
from edge_guard.training.run import Run

FUSED_NAME = "fused"


def save_graph(model: onnx.ModelProto, path: Path, props: Mapping[str, object]) -> str:
    """Set metadata_props, check, save `model` to `path`; returns its sha256."""
    set_metadata(model, props)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return sha256_file(path)


def write_bundle(
    bundle_dir: Path,
    run: Run,
    defense: DefenseSpec,
    graphs: Mapping[str, onnx.ModelProto],
    fused: onnx.ModelProto | None,
    *,
    name: str,
    description: str,
    vote: VoteRule,
    metrics: dict[str, Any],
    command: str,
    suffix: str = "",
    graph_props: Mapping[str, object] | None = None,
) -> Manifest:
    """Save the graphs into `bundle_dir` and write a validated manifest.json; returns the manifest.

    graphs: member name -> ONNX model (input "input", output "logits"), in run.members order.
    suffix: added to file names, e.g. ".int8" -> q20.int8.onnx.
    """
    bundle_dir.mkdir(parents=True, exist_ok=True)
    common = {"edgeguard.classes": list(run.classes), "edgeguard.defense": defense.to_dict(), **(graph_props or {})}
    members = []
    for m in run.members:
        file = f"{m.name}{suffix}.onnx"
        sha = save_graph(graphs[m.name], bundle_dir / file, {**common, "edgeguard.member": m.name,
                                                             "edgeguard.vaccination": str(m.vaccination),
                                                             "edgeguard.quality": json.dumps(m.quality)})
        members.append(BundleMember(name=m.name, file=file, sha256=sha, vaccination=m.vaccination, quality=m.quality))
    fused_spec = None
    if fused is not None:
        file = f"{FUSED_NAME}{suffix}.onnx"
        sha = save_graph(fused, bundle_dir / file, {**common, "edgeguard.member": FUSED_NAME,
                                                    "edgeguard.members": [m.name for m in run.members]})
        fused_spec = FusedSpec(file=file, sha256=sha)
    manifest = Manifest(
        format_version=FORMAT_VERSION, name=name, description=description, classes=tuple(run.classes),
        input=InputSpec.unit_range(*run.input_size), defense=defense, members=tuple(members), fused=fused_spec,
        vote=VoteRule(vote), metrics=metrics,
        provenance=Provenance(command=command, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              versions=versions()))
    write_manifest(bundle_dir, manifest)
    return manifest


def rewrite_metrics(bundle_dir: Path, manifest: Manifest, metrics: dict[str, Any]) -> Manifest:
    """Replace the manifest's metrics (files unchanged) and write it again, validated."""
    manifest = msgspec.structs.replace(manifest, metrics=metrics)
    write_manifest(bundle_dir, manifest)
    return manifest
