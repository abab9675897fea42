"""Where torch runs: --device names, their resolution to a torch.device, and CPU threads."""

from __future__ import annotations

import re

import torch

from edge_guard.errors import ConfigError, expected_got

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"  # --device values; see resolve_device


def is_device_name(name: object) -> bool:
    """Whether `name` is a --device value (DEVICE_NAMES); resolve_device checks that it exists."""
    return isinstance(name, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", name) is not None


def resolve_device(name: str) -> torch.device:
    """The torch device for --device: "auto" is the first CUDA GPU when torch sees one, else the CPU;
    "cuda"/"cuda:N" must exist (a clear error instead of a crash at the first batch)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(name.split(":")[1]) if ":" in name else 0
    if index >= count:
        got = (f"{count} CUDA device(s)" if count else
               f"no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'})")
        raise ConfigError(expected_got("--device", f"CUDA device {index}", got,
                                       "pass --device cpu (or auto), or install a CUDA build of torch."))
    return torch.device(name)


def set_threads(num_threads: int) -> None:
    """torch intra-op threads (0 keeps torch's default)."""
    if num_threads > 0 and torch.get_num_threads() != num_threads:
        torch.set_num_threads(num_threads)
