"""What a deployed sign reader reveals to someone who can feed it images: scores, or only the label.

The oracle runs the bundle exactly as the device does, through `Guard` (8-bit input, the real codec,
onnxruntime, the manifest's vote), and counts every image it is asked about. Attacks work on float
images in [0, 1] (N, H, W, 3); the oracle rounds them to the 8-bit grid first, because a camera or an
image file hands the device 8-bit pixels, so what is measured is what the device sees.
"""

from __future__ import annotations

import numpy as np

from edge_guard.engine import softmax, vote
from edge_guard.errors import InputError, expected_got
from edge_guard.guard import Guard

MAX_BATCH = 1024  # images per engine call (Guard.classify allows 4096 crops; keeps memory bounded)


def attack_inputs(attack: str, images: np.ndarray, labels: np.ndarray, eps: float, queries: int,
                  dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """An attack's (images as `dtype`, labels as int64), or InputError naming `attack` and what was expected."""
    x = np.asarray(images, dtype=dtype)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 4 or len(y) != len(x) or not 0 < eps <= 1 or queries < 1:
        raise InputError(expected_got(f"{attack} inputs", "images (N, H, W, 3), labels (N,), 0 < eps <= 1, "
                                      "queries >= 1", f"{x.shape}, {y.shape}, eps {eps}, queries {queries}"))
    return x, y


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float (N, H, W, 3) in [0, 1] -> uint8 on the nearest 8-bit level."""
    return np.clip(np.rint(np.asarray(images, dtype=np.float64) * 255), 0, 255).astype(np.uint8)


class Oracle:
    """Query access to a bundle: `scores` (the ensemble's mean softmax) or `labels` (the vote) only.

    Arguments:
        guard (Guard): the loaded bundle (its defense, members and vote rule run unchanged).

    Every image of every call counts as one query in `queries` (the running total).

    Example:
        >>> oracle = Oracle(Guard.from_bundle("export/gtsrb-shield", seed=0))
        >>> probs = oracle.scores(x)        # (N, K) float32, x float (N, 32, 32, 3) in [0, 1]
        >>> oracle.labels(x), oracle.queries
    """

    def __init__(self, guard: Guard) -> None:
        if not isinstance(guard, Guard):
            raise InputError(expected_got("guard", "an edge_guard.Guard", type(guard).__name__))
        self.guard = guard
        self.queries = 0
        b = guard.bundle.input
        self.shape = (b.height, b.width, 3)

    def _member_probs(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images)
        if x.ndim != 4 or x.shape[1:] != self.shape:
            raise InputError(expected_got("query images", f"(N, {self.shape[0]}, {self.shape[1]}, 3) in [0, 1]",
                                          x.shape))
        self.queries += len(x)
        batch = to_uint8(x)
        parts = []
        for i in range(0, len(batch), MAX_BATCH):
            chunk = batch[i:i + MAX_BATCH]
            parts.append(softmax(self.guard.engine.run(self.guard.to_tensor(self.guard.defend(chunk)))))
        return np.concatenate(parts, axis=1)  # (M, N, K)

    def scores(self, images: np.ndarray) -> np.ndarray:
        """(N, K) float32: the members' mean softmax (the per-class scores a device could expose)."""
        return self._member_probs(images).mean(axis=0)

    def labels(self, images: np.ndarray) -> np.ndarray:
        """(N,) int64: the bundle's decision (vote rule of the manifest), nothing else."""
        return vote(self._member_probs(images), self.guard.bundle.vote)[0].astype(np.int64)

    def decide(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels (N,), agreement (N,), confidence (N,)): the decision, the share of members voting for it
        and the vote's confidence (the suspect flag's inputs). Counts as one query per image, like `labels`."""
        probs = self._member_probs(images)
        ids, confidence, votes = vote(probs, self.guard.bundle.vote)
        return ids.astype(np.int64), (votes == ids[:, None]).mean(axis=1), confidence.astype(np.float32)
