"""HopSkipJump (decision-based): walk along the decision boundary with gradient-direction estimates.

'HopSkipJumpAttack: a query-efficient decision-based attack' (Chen, Jordan, Wainwright, IEEE S&P
2020) [https://arxiv.org/abs/1904.02144], untargeted, Linf version (sign of the estimated gradient,
Linf projections), geometric step-size search, following the authors' reference implementation:
initialise from uniform noise that the device misclassifies, binary-search towards the image, then
per iteration t: estimate the boundary's normal from 100 * sqrt(t) random probes of radius delta_t,
step eps_t = dist / sqrt(t) along its sign (halved until still adversarial), binary-search back.
Only the label is used (`Oracle.labels`). Every query counts; the attack stops at the budget.
"""

from __future__ import annotations

import numpy as np

from edge_guard.query_attacks.oracle import Oracle, attack_inputs
from edge_guard.query_attacks.square import AttackRun

QUANTUM = 1 / 255  # the device's pixel step
PROBE_LEVELS = 2  # smallest probe radius, in grey levels


class _Budget(Exception):
    """The query budget of one image ran out."""


class _Image:
    """One image under attack: its label, budget, and the closest adversarial point found so far."""

    def __init__(self, oracle: Oracle, x: np.ndarray, y: int, budget: int, eps: float) -> None:
        self.oracle, self.x, self.y, self.budget, self.eps = oracle, x, y, budget, eps
        self.used, self.best, self.best_dist, self.hit_at = 0, None, np.inf, None

    def adversarial(self, candidates: np.ndarray) -> np.ndarray:
        """bool (B,) for float (B, H, W, 3) candidates; spends B queries (fewer if the budget ends)."""
        left = self.budget - self.used
        if left <= 0:
            raise _Budget
        asked, candidates = len(candidates), candidates[:left]
        labels = self.oracle.labels(candidates)
        self.used += len(candidates)
        is_adv = labels != self.y
        for cand in candidates[is_adv]:  # every adversarial query is a result: keep the closest
            d = float(np.abs(np.rint(cand * 255) / 255 - self.x).max())
            if d < self.best_dist:
                self.best, self.best_dist = cand.copy(), d
                if d <= self.eps + 1e-6 and self.hit_at is None:
                    self.hit_at = self.used
        if len(candidates) < asked:
            raise _Budget
        return is_adv


def _project(x: np.ndarray, target: np.ndarray, alpha: float) -> np.ndarray:
    """The Linf projection of target onto the ball of radius alpha around x."""
    return np.clip(target, x - alpha, x + alpha)


def _binary_search(img: _Image, adv: np.ndarray, theta: float) -> tuple[np.ndarray, float]:
    """Move adv towards x along Linf balls while it stays adversarial; (boundary point, its distance)."""
    high = float(np.abs(adv - img.x).max())
    # the reference stops at theta ~ 1e-7; the device rounds to 8 bits, so a quarter grey level is enough
    low, threshold = 0.0, max(min(high * theta, theta), QUANTUM / 4)
    while high - low > threshold:
        mid = (high + low) / 2
        if img.adversarial(_project(img.x, adv, mid)[None])[0]:
            high = mid
        else:
            low = mid
    return _project(img.x, adv, high), high


def _gradient_direction(img: _Image, at: np.ndarray, n: int, delta: float, rng: np.random.Generator) -> np.ndarray:
    """The sign-corrected Monte-Carlo estimate of the boundary normal at `at` (Chen et al., eq. 9-10)."""
    rv = rng.uniform(-1, 1, size=(n, *at.shape))  # Linf radius delta (see _attack_one)
    probes = np.clip(at + delta * rv, 0, 1)
    rv = (probes - at) / delta
    fval = 2.0 * img.adversarial(probes).astype(np.float64) - 1.0
    if fval.mean() in (1.0, -1.0):
        grad = fval.mean() * rv.mean(axis=0)
    else:
        grad = ((fval - fval.mean())[:, None, None, None] * rv).mean(axis=0)
    return grad / (np.linalg.norm(grad) + 1e-12)


def _initialise(img: _Image, rng: np.random.Generator) -> np.ndarray | None:
    """Uniform noise the device misclassifies, pulled towards x by a blend search; None if none found."""
    for _ in range(100):
        noise = rng.uniform(0, 1, size=img.x.shape)
        if img.adversarial(noise[None])[0]:
            break
    else:
        return None
    low, high = 0.0, 1.0
    while high - low > 0.001:
        mid = (high + low) / 2
        if img.adversarial(((1 - mid) * img.x + mid * noise)[None])[0]:
            high = mid
        else:
            low = mid
    return (1 - high) * img.x + high * noise


def _attack_one(img: _Image, rng: np.random.Generator, iterations: int, gamma: float, max_evals: int) -> None:
    d = img.x.size
    theta = gamma / d ** 2  # the binary search's precision (Linf), as the reference implementation
    start = _initialise(img, rng)
    if start is None:
        return
    adv, dist = _binary_search(img, start, theta)
    for t in range(1, iterations + 1):
        # probe radius: the reference's 0.1, then d * theta * dist for unit-L2 probes, which is far below
        # one grey level here; Linf probes of at least PROBE_LEVELS levels keep the estimate informative
        delta = 0.1 if t == 1 else max(d * theta * dist * np.sqrt(d), PROBE_LEVELS * QUANTUM)
        n = int(min(100 * np.sqrt(t), max_evals))
        update = np.sign(_gradient_direction(img, adv, n, delta, rng))
        step = dist / np.sqrt(t)
        while not img.adversarial(np.clip(adv + step * update, 0, 1)[None])[0]:
            step /= 2
        adv, dist = _binary_search(img, np.clip(adv + step * update, 0, 1), theta)


def hopskipjump(oracle: Oracle, images: np.ndarray, labels: np.ndarray, *, eps: float = 8 / 255,
                queries: int = 1000, iterations: int = 64, gamma: float = 1.0, max_evals: int = 10_000,
                seed: int = 0) -> AttackRun:
    """HopSkipJump (Linf, untargeted) on `oracle.labels`, `queries` per image.

    Minimises the Linf distance of a misclassified point; an image counts as fooled when a queried
    point within eps (on the 8-bit grid the device sees) was misclassified, and `queries` then holds
    the queries it took to get there. Returns an `AttackRun` whose adv is the closest adversarial point
    found (the clean image where none was).
    """
    x, y = attack_inputs("hopskipjump", images, labels, eps, queries, dtype=np.float64)
    rng = np.random.default_rng(seed)
    adv, fooled, used = x.copy(), np.zeros(len(x), bool), np.zeros(len(x), np.int64)
    for i in range(len(x)):
        img = _Image(oracle, x[i], int(y[i]), queries, eps)
        try:
            _attack_one(img, rng, iterations, gamma, max_evals)
        except _Budget:
            pass
        if img.best is not None:
            adv[i] = np.rint(img.best * 255) / 255
        fooled[i] = img.hit_at is not None
        used[i] = img.hit_at if img.hit_at is not None else img.used
    return AttackRun(adv.astype(np.float32), fooled, used)
