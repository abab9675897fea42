"""Model bundle: a directory with `manifest.json` and the ONNX members it lists.

The manifest (format_version 1) makes a bundle self-describing: class names, input size and
normalization, the JPEG defense with its pinned codec settings, the members and their
vaccination, an optional fused graph, the vote rule, metrics measured at export and provenance.
Every ONNX file carries its sha256; a bundle whose files do not match is refused.

    bundle = load_bundle("export/gtsrb-shield")      # validates the schema and verifies hashes
    bundle.member_path(bundle.members[0])            # absolute Path of a member's ONNX file
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from edge_guard.errors import BundleError, expected_got

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ENV_BUNDLE = "EDGEGUARD_BUNDLE"

DEFENSE_KINDS = ("none", "jpeg", "slq")
VACCINATIONS = ("none", "jpeg", "slq")
SUBSAMPLINGS = ("420", "422", "444")
CODEC_BACKENDS = ("turbojpeg", "opencv")
VOTE_RULES = ("majority", "soft")

_CHUNK = 1 << 20  # 1 MiB: hash large ONNX files without loading them whole
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_FIX_HASH = "The file is corrupt or was modified: re-export the bundle (edgeguard export) or re-download it."


# ----------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class InputSpec:
    """Model input: x = (uint8 * scale - mean) / std, float32 NCHW of shape [N, 3, height, width]."""

    height: int
    width: int
    layout: str  # "NCHW"
    color: str  # "RGB"
    dtype: str  # "float32"
    scale: float  # 1/255 maps uint8 to [0, 1]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class CodecSpec:
    """The JPEG codec that vaccinated the members: backend name and libjpeg-turbo version."""

    backend: str  # "turbojpeg" | "opencv"
    version: str


@dataclass(frozen=True)
class DefenseSpec:
    """The input defense. per_member=True: member i sees its own preprocessing (see MemberSpec)."""

    kind: str  # "none" | "jpeg" | "slq"
    qualities: tuple[int, ...]  # shared jpeg: (q,); slq: the SLQ set; per-member jpeg: the members' qualities
    per_member: bool
    subsampling: str  # "420" | "422" | "444"
    codec: CodecSpec
    in_graph: bool  # True: the ONNX graphs contain the JPEG step; feed raw images


@dataclass(frozen=True)
class MemberSpec:
    """One ensemble member: ONNX file relative to the bundle, its sha256 and vaccination."""

    name: str
    file: str
    sha256: str
    vaccination: str  # "none" | "jpeg" | "slq"
    quality: int | None  # JPEG quality for vaccination "jpeg", else None


@dataclass(frozen=True)
class FusedSpec:
    """Optional single graph holding all members: output member_logits [M, N, C]."""

    file: str
    sha256: str


@dataclass(frozen=True)
class Provenance:
    """How the bundle was made: the command, ISO 8601 creation time, package versions."""

    command: str
    created: str
    versions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Bundle:
    """A validated bundle. `root` is the bundle directory; file paths in specs are relative to it."""

    root: Path
    format_version: int
    name: str
    description: str
    classes: tuple[str, ...]
    input: InputSpec
    defense: DefenseSpec
    members: tuple[MemberSpec, ...]
    fused: FusedSpec | None
    vote: str  # "majority" | "soft"
    metrics: dict[str, Any]
    provenance: Provenance

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def member_path(self, member: MemberSpec) -> Path:
        """Absolute path of a member's ONNX file."""
        return self.root / member.file

    def fused_path(self) -> Path | None:
        """Absolute path of the fused ONNX file, or None when the bundle has none."""
        return None if self.fused is None else self.root / self.fused.file

    def to_dict(self) -> dict[str, Any]:
        """The manifest as a JSON-ready dict (what `write_manifest` takes)."""
        inp, d = self.input, self.defense
        return {
            "format_version": self.format_version,
            "name": self.name,
            "description": self.description,
            "classes": list(self.classes),
            "input": {
                "height": inp.height, "width": inp.width, "layout": inp.layout, "color": inp.color,
                "dtype": inp.dtype, "scale": inp.scale, "mean": list(inp.mean), "std": list(inp.std),
            },
            "defense": {
                "kind": d.kind, "qualities": list(d.qualities), "per_member": d.per_member,
                "subsampling": d.subsampling,
                "codec": {"backend": d.codec.backend, "version": d.codec.version},
                "in_graph": d.in_graph,
            },
            "members": [
                {"name": m.name, "file": m.file, "sha256": m.sha256,
                 "vaccination": m.vaccination, "quality": m.quality}
                for m in self.members
            ],
            "fused": None if self.fused is None else {"file": self.fused.file, "sha256": self.fused.sha256},
            "vote": self.vote,
            "metrics": copy.deepcopy(self.metrics),
            "provenance": {
                "command": self.provenance.command,
                "created": self.provenance.created,
                "versions": dict(self.provenance.versions),
            },
        }


# ----------------------------------------------------------------------------- schema checks


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_keys(obj: Any, path: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    """`obj` must be a dict with exactly the required keys (plus optional ones)."""
    where = path or "manifest"
    if not isinstance(obj, dict):
        raise BundleError(expected_got(where, "a JSON object", _type_name(obj)))
    allowed = required + optional
    for key in obj:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise BundleError(
                f"{_join(path, key)}: unknown key; expected one of {', '.join(allowed)}.{hint}"
            )
    for key in required:
        if key not in obj:
            raise BundleError(expected_got(_join(path, key), "a required key", "nothing (key missing)",
                                           "Add it to manifest.json, or re-export the bundle."))
    return obj


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _str(value: Any, path: str, *, nonempty: bool = True) -> str:
    if not isinstance(value, str) or (nonempty and not value.strip()):
        raise BundleError(expected_got(path, "a non-empty string" if nonempty else "a string", repr(value)))
    return value


def _int(value: Any, path: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BundleError(expected_got(path, "an integer", f"{value!r} ({_type_name(value)})"))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise BundleError(expected_got(path, f"an integer in {lo}..{hi if hi is not None else 'inf'}", value))
    return value


def _float(value: Any, path: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BundleError(expected_got(path, "a number", f"{value!r} ({_type_name(value)})"))
    if positive and not value > 0:
        raise BundleError(expected_got(path, "a number > 0", value))
    return float(value)


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise BundleError(expected_got(path, "true or false", f"{value!r} ({_type_name(value)})"))
    return value


def _enum(value: Any, path: str, choices: tuple[str, ...]) -> str:
    if value not in choices or not isinstance(value, str):
        near = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"Did you mean {near[0]!r}?" if near else ""
        raise BundleError(expected_got(path, "one of " + ", ".join(repr(c) for c in choices), repr(value), hint))
    return value


def _list(value: Any, path: str, *, nonempty: bool = False) -> list:
    if not isinstance(value, list):
        raise BundleError(expected_got(path, "a JSON list", _type_name(value)))
    if nonempty and not value:
        raise BundleError(expected_got(path, "a non-empty list", "[]"))
    return value


def _rel_file(value: Any, path: str) -> str:
    """A relative path inside the bundle: no absolute paths, no '..' escaping the bundle."""
    text = _str(value, path)
    parts = Path(text).parts
    if Path(text).is_absolute() or ".." in parts or "\\" in text:
        raise BundleError(expected_got(path, "a relative path inside the bundle ('/' separators, no '..')", repr(text)))
    return text


def _sha(value: Any, path: str) -> str:
    text = _str(value, path)
    if not _SHA256_RE.match(text):
        raise BundleError(expected_got(path, "64 lowercase hex digits (sha256)", repr(text)))
    return text


# ----------------------------------------------------------------------------- parsing


def _parse_input(obj: Any) -> InputSpec:
    p = "input"
    _check_keys(obj, p, ("height", "width", "layout", "color", "dtype", "scale", "mean", "std"))
    triples = []
    for key in ("mean", "std"):
        values = _list(obj[key], f"{p}.{key}")
        if len(values) != 3:
            raise BundleError(expected_got(f"{p}.{key}", "3 numbers (one per RGB channel)", f"{len(values)} values"))
        triples.append(tuple(_float(v, f"{p}.{key}[{i}]", positive=key == "std") for i, v in enumerate(values)))
    return InputSpec(
        height=_int(obj["height"], f"{p}.height", 1),
        width=_int(obj["width"], f"{p}.width", 1),
        layout=_enum(obj["layout"], f"{p}.layout", ("NCHW",)),
        color=_enum(obj["color"], f"{p}.color", ("RGB",)),
        dtype=_enum(obj["dtype"], f"{p}.dtype", ("float32",)),
        scale=_float(obj["scale"], f"{p}.scale", positive=True),
        mean=triples[0],  # type: ignore[arg-type]
        std=triples[1],  # type: ignore[arg-type]
    )


def _parse_defense(obj: Any) -> DefenseSpec:
    p = "defense"
    _check_keys(obj, p, ("kind", "qualities", "per_member", "subsampling", "codec", "in_graph"))
    codec = _check_keys(obj["codec"], f"{p}.codec", ("backend", "version"))
    raw_qualities = _list(obj["qualities"], f"{p}.qualities")
    qualities = tuple(_int(q, f"{p}.qualities[{i}]", 1, 100) for i, q in enumerate(raw_qualities))
    return DefenseSpec(
        kind=_enum(obj["kind"], f"{p}.kind", DEFENSE_KINDS),
        qualities=qualities,
        per_member=_bool(obj["per_member"], f"{p}.per_member"),
        subsampling=_enum(obj["subsampling"], f"{p}.subsampling", SUBSAMPLINGS),
        codec=CodecSpec(
            backend=_enum(codec["backend"], f"{p}.codec.backend", CODEC_BACKENDS),
            version=_str(codec["version"], f"{p}.codec.version"),
        ),
        in_graph=_bool(obj["in_graph"], f"{p}.in_graph"),
    )


def _parse_member(obj: Any, i: int) -> MemberSpec:
    p = f"members[{i}]"
    _check_keys(obj, p, ("name", "file", "sha256", "vaccination", "quality"))
    vaccination = _enum(obj["vaccination"], f"{p}.vaccination", VACCINATIONS)
    quality = obj["quality"]
    if vaccination == "jpeg":
        quality = _int(quality, f"{p}.quality", 1, 100)
    elif quality is not None:
        raise BundleError(expected_got(f"{p}.quality", f"null for vaccination {vaccination!r}", repr(quality)))
    return MemberSpec(
        name=_str(obj["name"], f"{p}.name"),
        file=_rel_file(obj["file"], f"{p}.file"),
        sha256=_sha(obj["sha256"], f"{p}.sha256"),
        vaccination=vaccination,
        quality=quality,
    )


def _parse_provenance(obj: Any) -> Provenance:
    p = "provenance"
    _check_keys(obj, p, ("command", "created", "versions"))
    created = _str(obj["created"], f"{p}.created")
    try:  # Python 3.10's fromisoformat does not take a trailing 'Z'
        datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        raise BundleError(expected_got(f"{p}.created", "an ISO 8601 time like 2024-05-01T12:00:00+00:00",
                                       repr(created))) from None
    versions = obj["versions"]
    if not isinstance(versions, dict):
        raise BundleError(expected_got(f"{p}.versions", "a JSON object of name -> version", _type_name(versions)))
    for key, value in versions.items():
        _str(value, f"{p}.versions.{key}", nonempty=False)
    command = _str(obj["command"], f"{p}.command", nonempty=False)
    return Provenance(command=command, created=created, versions=dict(versions))


def _check_consistency(defense: DefenseSpec, members: tuple[MemberSpec, ...]) -> None:
    """Cross-field rules: what each defense mode needs from `qualities` and the members."""
    p = "defense"
    if defense.per_member:
        if defense.kind != "jpeg":
            raise BundleError(expected_got(
                f"{p}.per_member", f"false with kind {defense.kind!r}", "true",
                "Per-member preprocessing is for kind 'jpeg' (each member at its own quality); SLQ is shared "
                "by all members (per_member false), and kind 'none' has nothing per member."))
        for i, m in enumerate(members):
            if m.vaccination == "jpeg" and m.quality not in defense.qualities:
                raise BundleError(expected_got(
                    f"members[{i}].quality", f"one of defense.qualities {list(defense.qualities)}", m.quality))
        if any(m.vaccination == "slq" for m in members) and not defense.qualities:
            raise BundleError(expected_got(f"{p}.qualities", "the SLQ quality set for the slq member", "[]"))
    elif defense.kind == "jpeg" and len(defense.qualities) != 1:
        raise BundleError(expected_got(f"{p}.qualities", "exactly one quality [q] for shared jpeg",
                                       list(defense.qualities)))
    elif defense.kind == "slq" and not defense.qualities:
        raise BundleError(expected_got(f"{p}.qualities", "the SLQ quality set, e.g. [20, 40, 60, 80]", "[]"))
    elif defense.kind == "none" and defense.qualities:
        raise BundleError(expected_got(f"{p}.qualities", "[] for kind 'none'", list(defense.qualities)))
    if defense.in_graph and defense.kind == "none":
        raise BundleError(expected_got(f"{p}.in_graph", "false for kind 'none'", "true"))


def bundle_from_dict(data: Any, root: str | Path) -> Bundle:
    """Validate a manifest dict strictly (schema and cross-field rules; files are not touched).

    Raises BundleError naming the key path (e.g. `defense.subsampling`) with expected vs got.
    """
    _check_keys(data, "", ("format_version", "name", "description", "classes", "input", "defense",
                           "members", "vote", "metrics", "provenance"), optional=("fused",))
    version = _int(data["format_version"], "format_version")
    if version != FORMAT_VERSION:
        raise BundleError(expected_got("format_version", FORMAT_VERSION, version,
                                       "This bundle needs another edge-guard version; upgrade, or re-export it."))
    classes = tuple(_str(c, f"classes[{i}]") for i, c in enumerate(_list(data["classes"], "classes", nonempty=True)))
    if len(set(classes)) != len(classes):
        dup = sorted({c for c in classes if classes.count(c) > 1})
        raise BundleError(expected_got("classes", "unique class names", f"duplicates {dup}"))
    members = tuple(_parse_member(m, i) for i, m in enumerate(_list(data["members"], "members", nonempty=True)))
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise BundleError(expected_got("members", "unique member names", names))
    fused = data.get("fused")
    if fused is not None:
        _check_keys(fused, "fused", ("file", "sha256"))
        fused = FusedSpec(file=_rel_file(fused["file"], "fused.file"), sha256=_sha(fused["sha256"], "fused.sha256"))
    defense = _parse_defense(data["defense"])
    _check_consistency(defense, members)
    if not isinstance(data["metrics"], dict):
        raise BundleError(expected_got("metrics", "a JSON object", _type_name(data["metrics"])))
    return Bundle(
        root=Path(root),
        format_version=version,
        name=_str(data["name"], "name"),
        description=_str(data["description"], "description", nonempty=False),
        classes=classes,
        input=_parse_input(data["input"]),
        defense=defense,
        members=members,
        fused=fused,
        vote=_enum(data["vote"], "vote", VOTE_RULES),
        metrics=copy.deepcopy(data["metrics"]),
        provenance=_parse_provenance(data["provenance"]),
    )


# ----------------------------------------------------------------------------- files and hashes


def sha256_file(path: str | Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _bundle_files(bundle: Bundle) -> list[tuple[str, str, str]]:
    """(key path, relative file, expected sha256) for every file the manifest lists."""
    files = [(f"members[{i}].file", m.file, m.sha256) for i, m in enumerate(bundle.members)]
    if bundle.fused is not None:
        files.append(("fused.file", bundle.fused.file, bundle.fused.sha256))
    return files


def verify_files(bundle: Bundle, *, hashes: bool = True) -> None:
    """Check every listed file exists (and, with hashes=True, matches its sha256)."""
    for key, rel, expected in _bundle_files(bundle):
        path = bundle.root / rel
        if not path.is_file():
            raise BundleError(expected_got(key, f"an existing file {path}", "no such file",
                                           "Copy the whole bundle directory, or re-export it."))
        if hashes:
            got = sha256_file(path)
            if got != expected:
                raise BundleError(f"{path}: sha256 mismatch: manifest says {expected}, file has {got} "
                                  f"({path.stat().st_size} bytes). {_FIX_HASH}")


def _manifest_path(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.is_file():
        raise BundleError(expected_got("bundle", f"a bundle directory containing {MANIFEST_NAME}",
                                       f"{path} (not found)", "Pass the directory that `edgeguard export` wrote."))
    return p


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Load and validate a bundle from its directory (or its manifest.json).

    verify=True checks the sha256 of every member and fused file; files must exist either way.
    Raises BundleError on any schema, consistency, missing-file or hash problem.
    """
    manifest = _manifest_path(path)
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        where = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        raise BundleError(expected_got(str(manifest), "valid JSON", where,
                                       "Fix the file or re-export the bundle.")) from None
    except UnicodeDecodeError:
        raise BundleError(expected_got(str(manifest), "UTF-8 JSON text", "undecodable bytes")) from None
    bundle = bundle_from_dict(data, manifest.parent.resolve())
    verify_files(bundle, hashes=verify)
    return bundle


def write_manifest(bundle_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Validate `manifest` against the files already in `bundle_dir`, then write manifest.json.

    Writes atomically (temporary file + rename). Returns the manifest path.
    """
    root = Path(bundle_dir).resolve()
    bundle = bundle_from_dict(manifest, root)
    verify_files(bundle, hashes=True)
    target = root / MANIFEST_NAME
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(bundle.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, target)
    return target


def default_bundle_path() -> Path:
    """The shipped default bundle: $EDGEGUARD_BUNDLE if set, else <repo>/export/gtsrb-shield."""
    env = os.environ.get(ENV_BUNDLE)
    if env:
        path = Path(env).expanduser()
        source = f"${ENV_BUNDLE}"
    else:
        path = Path(__file__).resolve().parent.parent / "export" / "gtsrb-shield"
        source = "the default location"
    if not (path / MANIFEST_NAME).is_file():
        raise BundleError(f"No bundle is shipped at {path} ({source}): expected a directory with {MANIFEST_NAME}. "
                          "Pass a bundle path, or set EDGEGUARD_BUNDLE to one.")
    return path
