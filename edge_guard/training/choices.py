"""The training half's option vocabularies, as str enums (no torch here: the CLI builds its options from
them without loading the training extra)."""

from __future__ import annotations

from edge_guard.spec import Vocabulary


class Exporter(Vocabulary):
    """torch -> ONNX exporter."""

    AUTO = "auto"  # dynamo, then TorchScript if dynamo fails or disagrees
    DYNAMO = "dynamo"
    TORCHSCRIPT = "torchscript"


class DefenseChoice(Vocabulary):
    """`export --defense`: which manifest defense the members get."""

    PER_MEMBER = "per-member"  # each JPEG member at its own quality (and an SLQ member on SLQ)
    SLQ = "slq"  # one SLQ draw shared by all members
    NONE = "none"


class Split(Vocabulary):
    """Which images a run is measured on."""

    VAL = "val"  # the run's held-out validation tracks
    TEST = "test"  # the dataset's official test set


class RoiMode(Vocabulary):
    """Cropping dataset images to their annotated ROI."""

    AUTO = "auto"  # crop unless the image already has the model's input size (32x32 rescaled copies)
    CROP = "crop"
    NONE = "none"


class BpdaBackward(Vocabulary):
    """BPDA's backward pass through the JPEG step."""

    IDENTITY = "identity"
    DIFFJPEG = "diffjpeg"


class AdversarialMethod(Vocabulary):
    """`vaccinate --adversarial`: the attack adversarial vaccination trains on."""

    FGSM = "fgsm"  # one step from a random start (fast adversarial training)
    PGD = "pgd"  # k projected steps from a random start (Madry et al.)
    TRADES = "trades"  # k steps on the KL to the clean prediction, TRADES loss (Zhang et al.)
