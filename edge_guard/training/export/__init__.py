"""Export a vaccinated ensemble (or one checkpoint) to a verified ONNX bundle.

    from edge_guard.training.export import ExportOptions, export_bundle
    result = export_bundle("runs/shield", ExportOptions(out=Path("export/gtsrb-shield"), data=Path("data/gtsrb")))

Modules, one concept each:
    (what is exported, a Run and its validation data, comes from edge_guard.training.run)
    onnx_io     torch -> ONNX (pinned opset, dynamo with TorchScript fallback) and parity checks
    in_graph    DiffJPEG exported as a graph and chained in front of a member
    graph_ops   ONNX graph surgery: chain, fuse, topological sort, metadata_props
    precision   fp16 and int8 variants
    build       the bundle's graphs, each checked as it is made (members, fused, variants)
    measure     what each member sees, accuracies through Guard, gray-box FGSM
    writer      member files, sha256, manifest.json
    pipeline    the options and the steps in order, with a progress bar
"""

from edge_guard.training.export.pipeline import DEFENSES, ExportOptions, ExportResult, export_bundle, export_run

__all__ = ["DEFENSES", "ExportOptions", "ExportResult", "export_bundle", "export_run"]
