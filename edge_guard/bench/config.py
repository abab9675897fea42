"""What `bench` runs: the frames and regions, and the configurations (variants) it compares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_guard.errors import ConfigError, expected_got
from edge_guard.spec import Precision

MAX_SIDE = 8192  # pixels: a rendered frame larger than 8K is a typo


@dataclass(frozen=True)
class BenchConfig:
    """frames: timed frames per variant (after `warmup` untimed ones); rois: regions per frame (crops per
    classify call); synthetic: (width, height) of the rendered road scenes, used unless `source` names frames
    to read (a video, images, a camera, - or a URL; its first `distinct` frames are cycled); distinct: frames
    rendered or read, cycled through the run; compare: variant specs measured interleaved with the bundle
    (see `parse_variant`); providers/threads/...: as Guard.from_bundle."""

    frames: int = 50
    warmup: int = 5
    rois: int = 4
    synthetic: tuple[int, int] = (1920, 1080)
    source: str | None = None
    distinct: int = 4
    compare: tuple[str, ...] = ()
    providers: tuple[str, ...] = ("cpu",)
    threads: int | None = None
    seed: int = 0
    dct_scaling: bool = True
    spin: bool = False  # onnxruntime threads spin-wait between calls: off, or one variant's spin slows the next
    trusted_keys: tuple[str, ...] = ()  # public key files: the bundles must be signed by one of them
    provider_options: dict[str, dict[str, Any]] | None = None  # per provider, e.g. TensorRT fp16 and engine cache
    allow_fallback: bool = False  # a provider that fails to start: the next one runs (logged) instead of an error

    def check(self) -> None:
        for name, value, lo in (("frames", self.frames, 1), ("warmup", self.warmup, 0), ("rois", self.rois, 1),
                                ("distinct", self.distinct, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ConfigError(expected_got(f"bench {name}", f"an integer >= {lo}", value))
        w, h = self.synthetic
        if not (16 <= w <= MAX_SIDE and 16 <= h <= MAX_SIDE):
            raise ConfigError(expected_got("--synthetic", f"WxH with sides 16..{MAX_SIDE}", f"{w}x{h}"))


@dataclass(frozen=True)
class Variant:
    """One configuration: a bundle (None: the bench's bundle) in fused or per-member form, on providers, threads."""

    name: str
    bundle: str | None = None
    use_fused: bool | None = None  # None: the bundle's default (fused when it has a graph)
    providers: tuple[str, ...] | None = None
    threads: int | None = None
    precision: str | None = None  # the bundle's variant folder NAME-fp16 / NAME-int8 beside it
    spin: bool | None = None  # None: the config's


def parse_variant(text: str) -> Variant:
    """A --compare value: "fused", "members", "threads=N", "provider=NAME", "precision=fp16|int8", "spin"
    (onnxruntime threads spin-wait between calls), "bundle=PATH" or a bundle path. ConfigError names the forms."""
    spec = text.strip()
    key, _, value = spec.partition("=")
    if spec in ("fused", "members"):
        return Variant(spec, use_fused=spec == "fused")
    if spec == "spin":
        return Variant(spec, spin=True)
    if key == "threads" and value.isdigit():
        return Variant(spec, threads=int(value))
    if key == "provider" and value:
        return Variant(spec, providers=(value,))
    if key == "precision" and value in Precision.values():
        return Variant(spec, precision=value)
    if key == "bundle" and value:
        return Variant(f"bundle={Path(value).name}", bundle=value)
    if not value and Path(spec).expanduser().is_dir():
        return Variant(Path(spec).name, bundle=spec)
    raise ConfigError(expected_got("--compare", "fused, members, threads=N, provider=NAME, precision=fp16|int8, "
                                   "spin, bundle=PATH or a bundle folder", repr(text)))


def parse_synthetic(text: str) -> tuple[int, int]:
    """'1920x1080' -> (1920, 1080); ConfigError otherwise."""
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise ConfigError(expected_got("--synthetic", "WxH in pixels, e.g. 1920x1080", repr(text)))
    return int(w), int(h)
