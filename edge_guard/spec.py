"""The shared vocabulary of both halves: defense kinds, vaccinations, subsamplings, vote rules, and
the frozen specs of a model input, a codec, a defense and an ensemble member.

Defined once here; the runtime (bundle, guard, engine), the training half (vaccinate, export,
evaluate, attacks) and the manifest/ensemble/profile schemas all import these. The specs are
msgspec Structs, so they are at the same time the declarative schema of the files they appear in
(`edge_guard.schema` decodes them with key-path errors). No torch, no I/O.

    DefenseKind.JPEG == "jpeg"                  # the enums are str: they compare and serialise as text
    MemberSpec("q40", Vaccination.JPEG, 40)     # what a member is: its name and what it was vaccinated on
    InputSpec.unit_range(32, 32)                # float32 NCHW in [0, 1], as every exported graph takes
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

import msgspec
import numpy as np


class Vocabulary(str, Enum):
    """A str enum whose str() and format() are its value (Python 3.10 has no enum.StrEnum)."""

    def __str__(self) -> str:
        return str(self.value)

    __format__ = str.__format__

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)


class DefenseKind(Vocabulary):
    """The input defense of a bundle."""

    NONE = "none"
    JPEG = "jpeg"  # a JPEG round trip (one shared quality, or each member its own)
    SLQ = "slq"  # SHIELD's Stochastic Local Quantization, one draw shared by all members


class Vaccination(Vocabulary):
    """What a member was fine-tuned on."""

    NONE = "none"  # clean images (a base model)
    JPEG = "jpeg"  # JPEG round trips at the member's quality
    SLQ = "slq"  # fresh SLQ draws


class Subsampling(Vocabulary):
    """JPEG chroma subsampling (libjpeg's 4:2:0 is the defense's default)."""

    S420 = "420"
    S422 = "422"
    S444 = "444"


class VoteRule(Vocabulary):
    """How members' predictions combine."""

    MAJORITY = "majority"  # most member votes; ties to the highest mean probability, then the lowest id
    SOFT = "soft"  # argmax of the mean probability


class CodecBackend(Vocabulary):
    """JPEG codec backends: PyTurboJPEG over the system libturbojpeg, or OpenCV's bundled libjpeg-turbo."""

    TURBOJPEG = "turbojpeg"
    OPENCV = "opencv"


class BackendChoice(Vocabulary):
    """A requested JPEG backend: "auto" takes turbojpeg when libturbojpeg loads, else opencv."""

    AUTO = "auto"
    TURBOJPEG = "turbojpeg"
    OPENCV = "opencv"


class Precision(Vocabulary):
    """Numeric precision of a bundle's graphs."""

    FP32 = "fp32"
    FP16 = "fp16"  # converted graph; the gain is on GPU providers
    INT8 = "int8"  # static QDQ quantization, calibrated on training images


DEFAULT_SLQ_QUALITIES = (20, 40, 60, 80)  # SHIELD's quality set
DEFAULT_SUSPECT_BELOW = 0.6  # member agreement: with 5 members, 2 of 5 (0.4) is suspect, 3 of 5 (0.6) is not
MAX_PIXELS = 40_000_000  # per frame: above 8K (33 MP), far below what exhausts a 4 GB board (120 MB decoded)

# Constrained scalar types; `description` is the "expected ..." phrase of a validation error.
Quality = Annotated[int, msgspec.Meta(ge=1, le=100, description="an integer in 1..100")]
Positive = Annotated[int, msgspec.Meta(ge=1, description="an integer >= 1")]
# bounded, so NaN and inf (which Python's json reads from "NaN" and "Infinity") fail the check
PositiveFloat = Annotated[float, msgspec.Meta(gt=0, le=1e6, description="a number > 0 (finite)")]
Finite = Annotated[float, msgspec.Meta(ge=-1e6, le=1e6, description="a number (finite)")]
# linear-time patterns (one lookahead, no nested quantifiers); \Z, not $, which would accept a final newline
NonEmptyStr = Annotated[str, msgspec.Meta(pattern=r"^(?=.*\S)[^\x00-\x1f\x7f]*\Z", max_length=4096,
                                          description="a non-empty string without control characters")]
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z", description="64 lowercase hex digits (sha256)")]
RGBTriple = Annotated[tuple[Finite, Finite, Finite], msgspec.Meta(description="3 numbers (one per RGB channel)")]
PositiveTriple = Annotated[tuple[PositiveFloat, PositiveFloat, PositiveFloat],
                           msgspec.Meta(description="3 numbers > 0 (one per RGB channel)")]


class Spec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every schema type: immutable, unknown keys refused, fields passed by name."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready builtins (tuples as lists, enums as their values)."""
        return msgspec.json.decode(msgspec.json.encode(self))


class InputSpec(Spec, kw_only=True):
    """Model input: x = (uint8 * scale - mean) / std, float32 NCHW of shape [N, 3, height, width]."""

    height: Positive
    width: Positive
    layout: Literal["NCHW"] = "NCHW"
    color: Literal["RGB"] = "RGB"
    dtype: Literal["float32"] = "float32"
    scale: PositiveFloat = 1 / 255  # maps uint8 to [0, 1]
    mean: RGBTriple = (0.0, 0.0, 0.0)
    std: PositiveTriple = (1.0, 1.0, 1.0)

    @classmethod
    def unit_range(cls, height: int, width: int) -> InputSpec:
        """float32 in [0, 1] (scale 1/255, mean 0, std 1): what exported graphs take; they normalise inside."""
        return cls(height=int(height), width=int(width))

    def to_tensor(self, images: np.ndarray) -> np.ndarray:
        """uint8 ...xHxWx3 -> float32 ...x3xHxW with x = (uint8 * scale - mean) / std (C-contiguous)."""
        x = images.astype(np.float32) * np.float32(self.scale)
        if self.mean != (0.0, 0.0, 0.0) or self.std != (1.0, 1.0, 1.0):
            x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(np.moveaxis(x, -1, -3))


class CodecSpec(Spec, kw_only=True):
    """The JPEG codec that vaccinated the members: backend name and libjpeg-turbo version."""

    backend: CodecBackend
    version: NonEmptyStr


class DefenseSpec(Spec, kw_only=True):
    """The input defense. per_member=True: member i sees its own preprocessing (see MemberSpec).

    qualities: shared jpeg: (q,); slq: the SLQ set; per-member jpeg: the members' qualities (and the
    SLQ set of an SLQ member, which then contains them). in_graph: the graphs contain the JPEG step.
    """

    kind: DefenseKind
    qualities: tuple[Quality, ...]
    per_member: bool
    subsampling: Subsampling
    codec: CodecSpec
    in_graph: bool

    @property
    def on_cpu(self) -> bool:
        """Whether the runtime runs the defense on the CPU before the graphs (not none, not in the graph)."""
        return self.kind != DefenseKind.NONE and not self.in_graph


class MemberSpec(Spec, kw_only=True):
    """One ensemble member: its name and what it was vaccinated on (quality: for JPEG only, else None)."""

    name: NonEmptyStr
    vaccination: Vaccination
    quality: Quality | None

    @property
    def view(self) -> str:
        """The name of the validation view this member is measured on: "jpeg_<q>", "slq" or "clean"."""
        if self.vaccination == Vaccination.JPEG:
            return f"jpeg_{self.quality}"
        return "slq" if self.vaccination == Vaccination.SLQ else "clean"

    def check(self, where: str) -> str | None:
        """The cross-field rule (a quality exactly for JPEG members), as an error message or None."""
        if self.vaccination == Vaccination.JPEG and self.quality is None:
            return f"{where}.quality: expected an integer in 1..100 for vaccination 'jpeg', got null."
        if self.vaccination != Vaccination.JPEG and self.quality is not None:
            return f"{where}.quality: expected null for vaccination {self.vaccination.value!r}, got {self.quality!r}."
        return None


def member_spec(vaccination: Vaccination | str, quality: int | None = None) -> MemberSpec:
    """The conventional member for a vaccination: q<quality> for JPEG, "slq", or "base"."""
    vaccination = Vaccination(vaccination)
    name = {Vaccination.JPEG: f"q{quality}", Vaccination.SLQ: "slq"}.get(vaccination, "base")
    return MemberSpec(name=name, vaccination=vaccination, quality=quality if vaccination == Vaccination.JPEG else None)
