"""Firmware profiles: one TOML file per target device (`firmware_profiles/NAME.toml`), validated by a schema.

    profile = load_profile("raspberry-pi-5")          # a shipped name, or a path to a .toml file
    profile.providers[0].name, profile.threads, profile.latency_budget_ms

A profile says which bundle runs, on which execution providers in order (with their onnxruntime
options: TensorRT fp16 and engine cache, device ids, workspace), whether falling back to the next
provider is allowed, threads, the camera mode, the regions, the live queue and the p99 latency budget
`bench` checks. Unknown keys are refused with the nearest valid key, wrong types and ranges named by
key path (`edge_guard.schema`). On the command line, a flag given explicitly wins over the profile
and the run says so.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from edge_guard.bundle import DEFAULT_BUNDLE, SHIPPED_BUNDLES
from edge_guard.errors import ConfigError, expected_got
from edge_guard.schema import decode
from edge_guard.spec import NonEmptyStr, Positive, Precision, Spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PROFILES_DIR = Path(__file__).parent / "firmware_profiles"  # links to firmware_profiles/; copied into wheels
OptionValue = str | int | float | bool
Box = Annotated[tuple[int, int, int, int], msgspec.Meta(description="a box [x1, y1, x2, y2] in frame pixels")]


class ProviderProfile(Spec, kw_only=True):
    """One execution provider: a short name (tensorrt, cuda, openvino, cpu, ...) and its onnxruntime options."""

    name: NonEmptyStr
    options: dict[str, OptionValue] = {}


class CameraProfile(Spec, kw_only=True):
    device: NonEmptyStr = "/dev/video0"
    width: Positive | None = None
    height: Positive | None = None
    fps: Annotated[float, msgspec.Meta(gt=0, le=1000, description="frames per second > 0")] | None = None
    fourcc: Annotated[str, msgspec.Meta(pattern=r"^[ -~]{4}\Z", description="4 characters like MJPG")] = "MJPG"


class RegionsProfile(Spec, kw_only=True):
    rois: tuple[Box, ...] = ()
    detector: str | None = None  # an ONNX detector file, relative to the profile's folder or absolute
    detector_score: Annotated[float, msgspec.Meta(ge=0, le=1, description="a number in [0, 1]")] = 0.25
    detector_classes: tuple[int, ...] | None = None


class Profile(Spec, kw_only=True):
    """A target device. bundle: a bundle folder name under export/ or a path."""

    name: NonEmptyStr
    description: str = ""
    bundle: NonEmptyStr = DEFAULT_BUNDLE
    precision: Precision = Precision.FP32
    providers: Annotated[tuple[ProviderProfile, ...], msgspec.Meta(min_length=1)] = (ProviderProfile(name="cpu"),)
    allow_fallback: bool = False  # a provider that fails to start: run on the next one (logged) instead of stopping
    threads: Annotated[int, msgspec.Meta(ge=0, le=256, description="an integer in 0..256")] | None = None
    defense: Literal["cpu", "in-graph"] = "cpu"  # where the JPEG step runs: the CPU codec, or inside the graphs
    batch: Positive = 1  # crops per classify call: regions per frame in `bench` (--rois), its budget checked there
    queue_size: Positive = 2
    dct_scaling: bool = True  # decode camera JPEGs at the smallest DCT scale the regions allow
    latency_budget_ms: Annotated[float, msgspec.Meta(gt=0, description="milliseconds > 0")] | None = None
    # public keys (relative to the profile's folder or absolute): set, the bundle must be signed by one of them
    trusted_keys: tuple[NonEmptyStr, ...] = ()
    camera: CameraProfile = CameraProfile()
    regions: RegionsProfile = RegionsProfile()
    path: str = ""  # where it was loaded from (set by load_profile, not written in the file)

    def bundle_path(self) -> Path:
        """The bundle: a path as given, else a folder of that name under export/ (precision variants beside it)."""
        given = Path(self.bundle).expanduser()
        if given.is_absolute() or given.exists():
            return given
        name = self.bundle if self.precision == Precision.FP32 else f"{self.bundle}-{self.precision.value}"
        return SHIPPED_BUNDLES / name

    def check_bundle(self, bundle: Any) -> None:
        """ConfigError when the loaded bundle does not place its JPEG step where the profile says."""
        in_graph = bool(bundle.defense.in_graph)
        if (self.defense == "in-graph") != in_graph:
            fix = ("Export it with `edgeguard export --in-graph-jpeg`, or set defense = \"cpu\"." if not in_graph
                   else "Use a bundle exported without --in-graph-jpeg, or set defense = \"in-graph\".")
            raise ConfigError(expected_got(f"profile {self.name} defense", f"a bundle with the JPEG step "
                                           f"{'inside its graphs' if self.defense == 'in-graph' else 'on the CPU'}",
                                           f"{bundle.name} ({'in-graph' if in_graph else 'CPU'} JPEG)", fix))

    def provider_names(self) -> list[str]:
        return [p.name for p in self.providers]

    def provider_options(self) -> dict[str, dict[str, OptionValue]]:
        return {p.name: dict(p.options) for p in self.providers if p.options}


def list_profiles() -> list[str]:
    """The shipped profiles' names, sorted."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def _path_of(name_or_path: str | Path) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix == ".toml" or path.exists():
        return path
    shipped = PROFILES_DIR / f"{name_or_path}.toml"
    if not shipped.is_file():
        import difflib

        names = list_profiles()
        near = difflib.get_close_matches(str(name_or_path), names, n=1)
        raise ConfigError(expected_got("--profile", "a shipped profile (" + ", ".join(names) + ") or a .toml file",
                                       repr(str(name_or_path)), f"Did you mean {near[0]!r}?" if near else ""))
    return shipped


def load_profile(name_or_path: str | Path) -> Profile:
    """Load and validate a profile by shipped name or path. ConfigError names the key path on any problem."""
    path = _path_of(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(expected_got("profile", "a readable TOML file", f"{path} ({exc.strerror or exc})")) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(expected_got(str(path), "valid TOML", str(exc))) from None
    profile = decode(data, Profile, error=ConfigError, root=path.name, fix="See firmware_profiles/ for examples.")
    from edge_guard.engine import _canonical, _known_providers

    known = _known_providers()
    for i, p in enumerate(profile.providers):
        try:
            _canonical(p.name, known)
        except ConfigError as exc:
            raise ConfigError(f"{path.name}.providers[{i}].name: {exc}") from None
    keys = tuple(k if Path(k).is_absolute() else str(path.parent / k) for k in profile.trusted_keys)
    profile = msgspec.structs.replace(profile, trusted_keys=keys)
    detector = profile.regions.detector
    if detector and not Path(detector).is_absolute():
        regions = msgspec.structs.replace(profile.regions, detector=str(path.parent / detector))
        profile = msgspec.structs.replace(profile, regions=regions)
    return msgspec.structs.replace(profile, path=str(path))
