"""Model bundle: a directory with `manifest.json` and the ONNX members it lists.

The manifest (format_version 1) makes a bundle self-describing: class names, input size and
normalization, the JPEG defense with its pinned codec settings, the members and their
vaccination, an optional fused graph, the vote rule, metrics measured at export and provenance.
Every ONNX file carries its sha256; a bundle whose files do not match is refused.

    bundle = load_bundle("export/gtsrb-shield")      # validates the schema and verifies hashes
    bundle.member_path(bundle.members[0])            # absolute Path of a member's ONNX file
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec

from edge_guard.errors import BundleError, expected_got
from edge_guard.schema import decode
from edge_guard.spec import DefenseKind, DefenseSpec, InputSpec, MemberSpec, NonEmptyStr, Sha256, Spec, VoteRule

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ENV_BUNDLE = "EDGEGUARD_BUNDLE"
SHIPPED_BUNDLES = Path(__file__).parent / "bundles"  # links to export/ in the source tree; copied into wheels
DEFAULT_BUNDLE = "gtsrb-shield-r14"  # 98.65% on the official GTSRB test set (the compact gtsrb-shield: 96.31%)

_CHUNK = 1 << 20  # 1 MiB: hash large ONNX files without loading them whole
MAX_MANIFEST_BYTES = 4 << 20  # a real manifest is a few KiB; refuse what could exhaust a small board
MAX_MANIFEST_DEPTH = 32  # the schema nests 4 deep; metrics a few more
_FIX_HASH = "The file is corrupt or was modified: re-export the bundle (edgeguard export) or re-download it."
_FIX_KEY = "Add it to manifest.json, or re-export the bundle."


# ----------------------------------------------------------------------------- schema (format_version 1)


class BundleMember(MemberSpec, kw_only=True):
    """A member as a bundle ships it: its MemberSpec plus its ONNX file (relative to the bundle) and sha256."""

    file: NonEmptyStr
    sha256: Sha256


class FusedSpec(Spec, kw_only=True):
    """Optional single graph holding all members: output member_logits [M, N, C]."""

    file: NonEmptyStr
    sha256: Sha256


class AlarmSpec(Spec, kw_only=True):
    """The attack alarm measured for this bundle (`edge_guard.alarm.choose_alarm`): a region is suspect when
    fewer than `suspect_below` of the members vote for the winner (0: never), or its confidence is below
    `confidence_below` (0: off). `measured`: the rates behind the choice (clean false alarms, detection per
    attack, AUC, images, the command). Optional: bundles without it use DEFAULT_SUSPECT_BELOW."""

    suspect_below: Annotated[float, msgspec.Meta(ge=0, le=1, description="a share of members in [0, 1] (0: off)")]
    confidence_below: Annotated[float, msgspec.Meta(ge=0, le=1, description="a confidence in [0, 1]")] = 0.0
    measured: dict[str, Any] = {}


class Provenance(Spec, kw_only=True):
    """How the bundle was made: the command, ISO 8601 creation time, package versions."""

    command: str
    created: NonEmptyStr
    versions: dict[str, str] = {}


class Manifest(Spec, kw_only=True):
    """manifest.json. Field order is the order keys are written in."""

    format_version: int
    name: NonEmptyStr
    description: str
    classes: Annotated[tuple[NonEmptyStr, ...], msgspec.Meta(min_length=1)]
    input: InputSpec
    defense: DefenseSpec
    members: Annotated[tuple[BundleMember, ...], msgspec.Meta(min_length=1)]
    fused: FusedSpec | None = None
    vote: VoteRule
    metrics: dict[str, Any]
    alarm: AlarmSpec | None = None  # optional (format_version 1 bundles without it stay valid)
    provenance: Provenance

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready builtins; no "alarm" key when there is none, so such manifests read as before."""
        out = super().to_dict()
        if out.get("alarm") is None:
            out.pop("alarm", None)
        return out


def _manifest_field(name: str) -> Any:
    return property(lambda self: getattr(self.manifest, name), doc=f"The manifest's {name}.")


@dataclass(frozen=True)
class Bundle:
    """A validated bundle: its directory `root` (file paths in the manifest are relative to it) and manifest."""

    root: Path
    manifest: Manifest
    manifest_sha256: str = ""  # of manifest.json's bytes as loaded: names exactly what produced a result
    signed_by: str | None = None  # the id of the trusted key whose signature verified (None: not checked)
    blobs: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)  # file -> verified bytes

    # the manifest's fields, read through (bundle.classes, bundle.defense, bundle.members, ...)
    name = _manifest_field("name")
    description = _manifest_field("description")
    format_version = _manifest_field("format_version")
    classes = _manifest_field("classes")
    input = _manifest_field("input")
    defense = _manifest_field("defense")
    members = _manifest_field("members")
    fused = _manifest_field("fused")
    vote = _manifest_field("vote")
    metrics = _manifest_field("metrics")
    alarm = _manifest_field("alarm")
    provenance = _manifest_field("provenance")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def member_path(self, member: BundleMember) -> Path:
        """Absolute path of a member's ONNX file."""
        return self.root / member.file

    def fused_path(self) -> Path | None:
        """Absolute path of the fused ONNX file, or None when the bundle has none."""
        return None if self.fused is None else self.root / self.fused.file

    def to_dict(self) -> dict[str, Any]:
        """The manifest as a JSON-ready dict."""
        return self.manifest.to_dict()


# ----------------------------------------------------------------------------- cross-field rules


def _check_rel_file(text: str, path: str) -> None:
    """A relative path inside the bundle: no absolute paths, no '..' escaping the bundle."""
    if Path(text).is_absolute() or ".." in Path(text).parts or "\\" in text:
        raise BundleError(expected_got(path, "a relative path inside the bundle ('/' separators, no '..')", repr(text)))


def _check_defense(defense: DefenseSpec, members: tuple[BundleMember, ...]) -> None:
    """What each defense mode needs from `qualities` and the members."""
    p, kind = "defense", defense.kind
    if defense.per_member:
        if kind != DefenseKind.JPEG:
            raise BundleError(expected_got(
                f"{p}.per_member", f"false with kind {kind.value!r}", "true",
                "Per-member preprocessing is for kind 'jpeg' (each member at its own quality); SLQ is shared "
                "by all members (per_member false), and kind 'none' has nothing per member."))
        for i, m in enumerate(members):
            if m.vaccination == "jpeg" and m.quality not in defense.qualities:
                raise BundleError(expected_got(
                    f"members[{i}].quality", f"one of defense.qualities {list(defense.qualities)}", m.quality))
        if any(m.vaccination == "slq" for m in members) and not defense.qualities:
            raise BundleError(expected_got(f"{p}.qualities", "the SLQ quality set for the slq member", "[]"))
    elif kind == DefenseKind.JPEG and len(defense.qualities) != 1:
        raise BundleError(expected_got(f"{p}.qualities", "exactly one quality [q] for shared jpeg",
                                       list(defense.qualities)))
    elif kind == DefenseKind.SLQ and not defense.qualities:
        raise BundleError(expected_got(f"{p}.qualities", "the SLQ quality set, e.g. [20, 40, 60, 80]", "[]"))
    elif kind == DefenseKind.NONE and defense.qualities:
        raise BundleError(expected_got(f"{p}.qualities", "[] for kind 'none'", list(defense.qualities)))
    if defense.in_graph and kind == DefenseKind.NONE:
        raise BundleError(expected_got(f"{p}.in_graph", "false for kind 'none'", "true"))


def check_manifest(m: Manifest) -> Manifest:
    """The rules a schema cannot say: version, uniqueness, member qualities, paths, the defense, dates."""
    if m.format_version != FORMAT_VERSION:
        raise BundleError(expected_got("format_version", FORMAT_VERSION, m.format_version,
                                       "This bundle needs another edge-guard version; upgrade, or re-export it."))
    if len(set(m.classes)) != len(m.classes):
        dup = sorted(c for c, n in collections.Counter(m.classes).items() if n > 1)
        raise BundleError(expected_got("classes", "unique class names", f"duplicates {dup}"))
    names = [member.name for member in m.members]
    if len(set(names)) != len(names):
        raise BundleError(expected_got("members", "unique member names", names))
    for i, member in enumerate(m.members):
        if problem := member.check(f"members[{i}]"):
            raise BundleError(problem)
        _check_rel_file(member.file, f"members[{i}].file")
    if m.fused is not None:
        _check_rel_file(m.fused.file, "fused.file")
    _check_defense(m.defense, m.members)
    try:  # Python 3.10's fromisoformat does not take a trailing 'Z'
        datetime.fromisoformat(m.provenance.created.replace("Z", "+00:00"))
    except ValueError:
        raise BundleError(expected_got("provenance.created", "an ISO 8601 time like 2024-05-01T12:00:00+00:00",
                                       repr(m.provenance.created))) from None
    return m


def bundle_from_dict(data: Any, root: str | Path) -> Bundle:
    """Validate a manifest dict strictly (schema and cross-field rules; files are not touched).

    Raises BundleError naming the key path (e.g. `defense.subsampling`) with expected vs got.
    """
    return Bundle(Path(root), check_manifest(decode(data, Manifest, error=BundleError, fix=_FIX_KEY)))


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


def _inside(root: Path, rel: str, key: str) -> Path:
    """root/rel, refused when it resolves outside the bundle folder (a symlink pointing elsewhere)."""
    path = root / rel
    if not path.resolve().is_relative_to(root.resolve()):
        raise BundleError(expected_got(key, "a file inside the bundle folder", f"{rel} -> {path.resolve()}",
                                       "A member may not be a link to a model outside the bundle: copy it in."))
    return path


def verify_files(bundle: Bundle, *, hashes: bool = True) -> dict[str, bytes]:
    """Check every listed file exists inside the bundle (and, with hashes=True, matches its sha256).

    Returns relative file -> the bytes that were hashed (with hashes=True), so sessions are made from
    exactly what was checked and a file swapped on disk afterwards changes nothing.
    """
    blobs: dict[str, bytes] = {}
    for key, rel, expected in _bundle_files(bundle):
        path = _inside(bundle.root, rel, key)
        if not path.is_file():
            raise BundleError(expected_got(key, f"an existing file {path}", "no such file",
                                           "Copy the whole bundle directory, or re-export it."))
        if hashes:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise BundleError(expected_got(key, f"a readable file {path}", exc.strerror or str(exc))) from None
            got = hashlib.sha256(data).hexdigest()
            if got != expected:
                raise BundleError(f"{path}: sha256 mismatch: manifest says {expected}, file has {got} "
                                  f"({len(data)} bytes). {_FIX_HASH}")
            blobs[rel] = data
    return blobs


def _manifest_path(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.is_file():
        raise BundleError(expected_got("bundle", f"a bundle directory containing {MANIFEST_NAME}",
                                       f"{path} (not found)", "Pass the directory that `edgeguard export` wrote."))
    return p


def _depth(data: Any) -> int:
    """Nesting depth of JSON data, without recursion (a hostile manifest may nest thousands deep)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_MANIFEST_DEPTH:
            break
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _read_manifest(manifest: Path, signed_root: Path | None = None,
                   trusted_keys: Sequence[Any] = ()) -> tuple[bytes, Any, str | None]:
    """The manifest's bytes, its JSON and the id of the key that signed it (None unless signed_root); size-capped.
    With signed_root the signature over those bytes is checked before anything parses them, so an unsigned,
    hostile manifest never reaches the JSON parser or the schema."""
    try:
        size = manifest.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise BundleError(expected_got(str(manifest), f"a manifest of at most {MAX_MANIFEST_BYTES >> 20} MiB",
                                           f"{size} bytes", "This is not a bundle manifest; re-export the bundle."))
        raw = manifest.read_bytes()
    except OSError as exc:
        raise BundleError(expected_got(str(manifest), "a readable file", exc.strerror or str(exc))) from None
    if signed_root is not None:
        from edge_guard.signing import check_signature, read_public_keys

        keys = [k if not isinstance(k, (str, Path)) else read_public_keys([k])[0] for k in trusted_keys]
        signed_by = check_signature(signed_root, raw, keys)
    else:
        signed_by = None
    try:
        data = json.loads(raw.decode("utf-8"))
    except json.JSONDecodeError as exc:
        where = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        raise BundleError(expected_got(str(manifest), "valid JSON", where,
                                       "Fix the file or re-export the bundle.")) from None
    except UnicodeDecodeError:
        raise BundleError(expected_got(str(manifest), "UTF-8 JSON text", "undecodable bytes")) from None
    except RecursionError:
        raise BundleError(expected_got(str(manifest), f"JSON nested at most {MAX_MANIFEST_DEPTH} deep",
                                       "deeper nesting")) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise BundleError(expected_got(str(manifest), "valid JSON", str(exc))) from None
    if _depth(data) > MAX_MANIFEST_DEPTH:
        raise BundleError(expected_got(str(manifest), f"JSON nested at most {MAX_MANIFEST_DEPTH} deep",
                                       "deeper nesting", "This is not a bundle manifest; re-export the bundle."))
    return raw, data, signed_by


def load_bundle(path: str | Path, *, verify: bool = True, trusted_keys: Sequence[Any] | None = None,
                require_signed: bool = False) -> Bundle:
    """Load and validate a bundle from its directory (or its manifest.json).

    verify=True checks the sha256 of every member and fused file (and keeps the checked bytes for the
    sessions); files must exist, inside the folder, either way. trusted_keys (public key files or
    loaded keys) / require_signed: the manifest must carry an ed25519 signature by one of them
    (`edge_guard.signing`). Raises BundleError on any size, schema, consistency, file, hash or signature problem.
    """
    manifest = _manifest_path(path)
    root = manifest.parent.resolve()
    signed = trusted_keys is not None or require_signed
    raw, data, signed_by = _read_manifest(manifest, root if signed else None, trusted_keys or [])
    bundle = bundle_from_dict(data, root)
    blobs = verify_files(bundle, hashes=verify or signed)  # a signature vouches for hashes: they must be checked
    return dataclasses.replace(bundle, manifest_sha256=hashlib.sha256(raw).hexdigest(), signed_by=signed_by,
                               blobs=blobs)


def write_manifest(bundle_dir: str | Path, manifest: Manifest | dict[str, Any]) -> Path:
    """Validate `manifest` (typed, or a dict) against the files already in `bundle_dir`, then write
    manifest.json. Writes atomically (temporary file + rename). Returns the manifest path.
    """
    root = Path(bundle_dir).resolve()
    if isinstance(manifest, Manifest):
        bundle = Bundle(root, check_manifest(manifest))
    else:
        bundle = bundle_from_dict(manifest, root)
    verify_files(bundle, hashes=True)
    target = root / MANIFEST_NAME
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(bundle.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, target)
    return target


def default_bundle_path() -> Path:
    """The shipped default bundle: $EDGEGUARD_BUNDLE if set, else gtsrb-shield-r14 (the accurate ResNet-14
    ensemble; gtsrb-shield, the compact one, is for Raspberry-Pi-class CPUs) from the package's bundles/ folder,
    which is export/ in a source tree and a copy of it inside an installed wheel."""
    env = os.environ.get(ENV_BUNDLE)
    if env:
        path = Path(env).expanduser()
        source = f"${ENV_BUNDLE}"
    else:
        path = SHIPPED_BUNDLES / DEFAULT_BUNDLE
        source = "the default location"
    if not (path / MANIFEST_NAME).is_file():
        raise BundleError(f"No bundle is shipped at {path} ({source}): expected a directory with {MANIFEST_NAME}. "
                          "Pass a bundle path, or set EDGEGUARD_BUNDLE to one.")
    return path
