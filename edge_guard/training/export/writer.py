"""Write a bundle directory: member ONNX files (with metadata_props), optional fused graph, manifest.json.

The manifest follows `edge_guard.bundle`'s schema (format_version 1) and is validated, with every
file's sha256, by `edge_guard.bundle.write_manifest` before it is written.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx

from edge_guard import jpeg
from edge_guard.bundle import FORMAT_VERSION, sha256_file, write_manifest
from edge_guard.training.export.graph_ops import set_metadata
from edge_guard.training.export.measure import Defense
from edge_guard.training.export.source import RunSource
from edge_guard.training.provenance import versions

FUSED_NAME = "fused"


def defense_dict(defense: Defense, codec: Mapping[str, str]) -> dict[str, Any]:
    """The manifest's "defense" object."""
    return {"kind": defense.kind, "qualities": list(defense.qualities), "per_member": defense.per_member,
            "subsampling": defense.subsampling, "codec": {"backend": codec["backend"], "version": codec["version"]},
            "in_graph": defense.in_graph}


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that made the bundle: sys.argv, shell-quoted."""
    return shlex.join(list(sys.argv if argv is None else argv))


def save_graph(model: onnx.ModelProto, path: Path, props: Mapping[str, object]) -> str:
    """Set metadata_props, check, save `model` to `path`; returns its sha256."""
    set_metadata(model, props)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return sha256_file(path)


def write_bundle(
    bundle_dir: Path,
    run: RunSource,
    defense: Defense,
    graphs: Mapping[str, onnx.ModelProto],
    fused: onnx.ModelProto | None,
    *,
    name: str,
    description: str,
    vote: str,
    metrics: dict[str, Any],
    command: str,
    suffix: str = "",
    graph_props: Mapping[str, object] | None = None,
) -> dict[str, Any]:
    """Save the graphs into `bundle_dir` and write a validated manifest.json; returns the manifest dict.

    graphs: member name -> ONNX model (input "input", output "logits"), in run.members order.
    suffix: added to file names, e.g. ".int8" -> q20.int8.onnx.
    """
    bundle_dir.mkdir(parents=True, exist_ok=True)
    codec = run.codec or {k: str(v) for k, v in jpeg.codec_info().items() if k in ("backend", "version")}
    dense = defense_dict(defense, codec)
    common = {"edgeguard.classes": list(run.classes), "edgeguard.defense": dense, **(graph_props or {})}
    members = []
    for m in run.members:
        file = f"{m.name}{suffix}.onnx"
        sha = save_graph(graphs[m.name], bundle_dir / file, {**common, "edgeguard.member": m.name,
                                                             "edgeguard.vaccination": m.vaccination,
                                                             "edgeguard.quality": json.dumps(m.quality)})
        members.append({"name": m.name, "file": file, "sha256": sha, "vaccination": m.vaccination,
                        "quality": m.quality})
    fused_entry = None
    if fused is not None:
        file = f"{FUSED_NAME}{suffix}.onnx"
        sha = save_graph(fused, bundle_dir / file, {**common, "edgeguard.member": FUSED_NAME,
                                                    "edgeguard.members": [m.name for m in run.members]})
        fused_entry = {"file": file, "sha256": sha}
    h, w = run.input_size
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "description": description,
        "classes": list(run.classes),
        "input": {"height": int(h), "width": int(w), "layout": "NCHW", "color": "RGB", "dtype": "float32",
                  "scale": 1 / 255, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
        "defense": dense,
        "members": members,
        "fused": fused_entry,
        "vote": vote,
        "metrics": metrics,
        "provenance": {"command": command, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "versions": versions()},
    }
    write_manifest(bundle_dir, manifest)
    return manifest


def rewrite_metrics(bundle_dir: Path, manifest: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """Replace the manifest's metrics (files unchanged) and write it again, validated."""
    manifest = {**manifest, "metrics": metrics}
    write_manifest(bundle_dir, manifest)
    return manifest
