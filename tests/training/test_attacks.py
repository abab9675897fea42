"""Attacks on a tiny model trained in a second on synthetic 3-class data; BPDA/EOT/defended models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edge_guard import jpeg
from edge_guard.errors import ConfigError, InputError
from edge_guard.training.attacks import (
    BPDAJPEG,
    BPDASLQ,
    CW,
    EOT,
    FGSM,
    PGD,
    DeepFool,
    DefendedModel,
    attack_metrics,
    create_attack,
    ensemble_defended,
    jpeg_defended,
    list_attacks,
    perturbation_norms,
    predict,
    slq_defended,
    vote,
)
from edge_guard.training.diffjpeg import DiffJPEG

torch.set_num_threads(1)
SIZE, CLASSES = 16, 3


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, 16, 16) float images in [0, 1]: a smooth template per class plus noise; labels (N,)."""
    g = torch.Generator().manual_seed(seed)
    templates = F.interpolate(torch.rand(CLASSES, 3, 4, 4, generator=torch.Generator().manual_seed(123)),
                              size=SIZE, mode="bilinear", align_corners=False)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    images = 0.5 + 0.35 * (templates[labels] - 0.5) + 0.08 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    return images.clamp(0, 1), labels


def tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Dropout(0.1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, CLASSES),
    )


def trained_tiny_net() -> nn.Module:
    """tiny_net fitted on 256 synthetic images (seeded; 60 Adam steps), in eval mode."""
    torch.manual_seed(0)
    net = tiny_net()
    x, y = synthetic(256, seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def model() -> nn.Module:
    net = trained_tiny_net()
    for p in net.parameters():
        p.grad = None
    return net


@pytest.fixture(scope="module")
def batch(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = synthetic(48, seed=1)
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.9  # the model has learned the task
    return x, y


def loss_per_sample(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def fgsm_needed_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per sample, the L2 norm of the smallest FGSM perturbation (eps on a 1/255 grid) that flips it."""
    needed = torch.full((len(y),), float("inf"))
    for level in range(1, 65):
        adv = FGSM(model, eps=level / 255)(x, y)
        flipped = (predict(model, adv) != y) & torch.isinf(needed)
        needed[flipped] = perturbation_norms(x, adv)[0][flipped]
    return needed


# --- FGSM / PGD ---------------------------------------------------------------------------------


def reference_fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Goodfellow et al. 2015, eq. for x~ = x + eps sign(grad_x J), clipped to the image range."""
    xx = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(nn.CrossEntropyLoss()(model(xx), y), xx)
    return (x + eps * g.sign()).clamp(0, 1)


def reference_bim(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
                  steps: int) -> torch.Tensor:
    """Kurakin et al. 2017: X_{N+1} = Clip_{X,eps}{X_N + alpha sign(grad)}, Clip = min(1, X+eps, max(0, X-eps, .))."""
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        (g,) = torch.autograd.grad(nn.CrossEntropyLoss()(model(adv), y), adv)
        adv = adv.detach() + alpha * g.sign()
        adv = torch.minimum(torch.maximum(adv, x - eps), x + eps).clamp(0, 1)
    return adv


def test_fgsm_matches_reference_moves_exactly_eps_and_increases_loss(model, batch) -> None:
    x, y = batch
    eps = 4 / 255
    adv = FGSM(model, eps=eps)(x, y)
    assert torch.equal(adv, reference_fgsm(model, x, y, eps))
    delta = (adv - x).abs()
    unclipped = (adv > 0) & (adv < 1)
    assert torch.allclose(delta[unclipped], torch.full_like(delta[unclipped], eps), atol=1e-6)
    assert delta.max() <= eps + 1e-6
    assert loss_per_sample(model, adv, y).mean() > loss_per_sample(model, x, y).mean()


def test_pgd_without_random_start_is_bim(model, batch) -> None:
    x, y = batch
    adv = PGD(model, eps=6 / 255, alpha=1 / 255, steps=7, random_start=False)(x, y)
    ref = reference_bim(model, x, y, 6 / 255, 1 / 255, 7)
    assert (adv - ref).abs().max() < 1e-6


def test_pgd_stays_in_eps_ball_and_is_at_least_as_strong_as_fgsm(model, batch) -> None:
    x, y = batch
    eps = 4 / 255
    adv = PGD(model, eps=eps, alpha=1 / 255, steps=10, generator=torch.Generator().manual_seed(0))(x, y)
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    fgsm = FGSM(model, eps=eps)(x, y)
    pgd_fooled = int((predict(model, adv) != y).sum())
    fgsm_fooled = int((predict(model, fgsm) != y).sum())
    assert 0 < fgsm_fooled < len(y)  # the budget is neither trivial nor hopeless
    assert pgd_fooled >= fgsm_fooled
    assert loss_per_sample(model, adv, y).mean() >= loss_per_sample(model, fgsm, y).mean()


def test_pgd_random_start_is_reproducible_with_a_generator(model, batch) -> None:
    x, y = batch
    a = PGD(model, steps=2, generator=torch.Generator().manual_seed(3))(x, y)
    b = PGD(model, steps=2, generator=torch.Generator().manual_seed(3))(x, y)
    c = PGD(model, steps=2, generator=torch.Generator().manual_seed(4))(x, y)
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- DeepFool / CW ------------------------------------------------------------------------------


def test_deepfool_flips_nearly_all_with_less_l2_than_fgsm_needs(model, batch) -> None:
    x, y = batch
    adv = DeepFool(model)(x, y)
    m = attack_metrics(y, predict(model, x), predict(model, adv), x, adv)
    assert m.success_rate >= 0.95
    assert adv.min() >= 0 and adv.max() <= 1
    l2 = perturbation_norms(x, adv)[0]
    needed = fgsm_needed_l2(model, x, y)
    both = (predict(model, adv) != y) & torch.isfinite(needed) & (predict(model, x) == y)
    assert both.sum() > len(y) // 2
    assert l2[both].median() < needed[both].median()
    assert (l2[both] < needed[both]).float().mean() > 0.8


def test_batched_deepfool_equals_one_sample_at_a_time(model, batch) -> None:
    x, y = batch
    x, y = x[:12], y[:12].clone()
    y[0] = (y[0] + 1) % CLASSES  # a misclassified sample is returned unchanged
    attack = DeepFool(model, steps=50, overshoot=0.02, candidates=3)
    batched = attack(x, y)
    single = torch.cat([attack(x[i : i + 1], y[i : i + 1]) for i in range(len(y))])
    assert (batched - single).abs().max() < 1e-5
    assert torch.equal(batched[0], x[0])


def test_cw_finds_smaller_l2_than_fgsm_needs_and_stays_in_range(model, batch) -> None:
    x, y = batch
    x, y = x[:24], y[:24]
    adv = CW(model, steps=60, binary_search_steps=4)(x, y)
    assert adv.min() >= 0 and adv.max() <= 1
    flipped = predict(model, adv) != y
    assert flipped.float().mean() >= 0.9
    l2 = perturbation_norms(x, adv)[0]
    needed = fgsm_needed_l2(model, x, y)
    both = flipped & torch.isfinite(needed)
    assert l2[both].median() < needed[both].median()
    assert torch.equal(adv[~flipped], x[~flipped])  # no success: the clean image comes back


# --- base class ---------------------------------------------------------------------------------


class ModeProbe(nn.Module):
    """Records the training flag it saw on each forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.training)
        return x


@pytest.mark.parametrize("attack_cls", [FGSM, PGD, DeepFool, CW])
def test_attack_runs_in_eval_and_restores_each_module_mode(model, batch, attack_cls) -> None:
    probe = ModeProbe()
    net = nn.Sequential(probe, model)
    net.train()
    model[1].eval()  # a submodule the caller froze on purpose must stay frozen
    x, y = batch
    kwargs = {"steps": 2} if attack_cls in (PGD, DeepFool, CW) else {}
    if attack_cls is CW:
        kwargs["binary_search_steps"] = 1
    attack_cls(net, **kwargs)(x[:4], y[:4])
    assert probe.seen and not any(probe.seen)
    assert net.training and model.training and probe.training
    assert not model[1].training
    assert all(p.grad is None for p in model.parameters())  # gradients w.r.t. images only
    model.eval()


class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_attack_restores_mode_even_when_it_fails(model, batch) -> None:
    net = nn.Sequential(model, Boom())
    net.train()
    with pytest.raises(RuntimeError, match="boom"):
        FGSM(net)(*batch)
    assert net.training and model.training
    model.eval()


def test_bad_inputs_raise_input_error(model, batch) -> None:
    x, y = batch
    with pytest.raises(InputError, match="range"):
        FGSM(model)(x * 255, y)
    with pytest.raises(InputError):
        FGSM(model)(x[0], y[:1])
    with pytest.raises(InputError):
        FGSM(model)(x, y[:3])
    with pytest.raises(InputError):
        FGSM(model)(x, y.float())
    with pytest.raises(InputError):
        FGSM(model, eps=8)
    with pytest.raises(InputError):
        PGD(model, steps=0)


def test_registry_creates_attacks_by_name(model) -> None:
    assert list_attacks() == ["apgd-ce", "apgd-dlr", "cw", "deepfool", "fgsm", "pgd"]
    attack = create_attack("PGD", model, eps=2 / 255, steps=3)
    assert isinstance(attack, PGD) and attack.steps == 3 and attack.eps == pytest.approx(2 / 255)
    assert "eps=" in repr(attack)
    with pytest.raises(ConfigError):
        create_attack("jsma", model)
    with pytest.raises(ConfigError):
        create_attack("fgsm", model, epsilon=0.1)


def test_metrics_count_only_originally_correct_images() -> None:
    labels = torch.tensor([0, 1, 2, 0])
    clean = torch.tensor([0, 1, 0, 0])  # image 2 was already wrong
    adv = torch.tensor([1, 1, 1, 2])  # flips 0 and 3; image 2 does not count
    x = torch.zeros(4, 1, 2, 2)
    x_adv = x.clone()
    x_adv[0, 0, 0, 0] = 0.3
    x_adv[3, 0, :, :] = 0.1
    m = attack_metrics(labels, clean, adv, x, x_adv)
    assert (m.n, m.n_correct, m.n_flipped) == (4, 3, 2)
    assert m.success_rate == pytest.approx(2 / 3)
    assert m.clean_accuracy == pytest.approx(0.75) and m.adv_accuracy == pytest.approx(0.25)
    assert m.l2_mean == pytest.approx((0.3 + 0.2) / 2)  # image 3: sqrt(4 * 0.01) = 0.2
    assert m.linf_median == pytest.approx(0.1)  # torch's median of (0.3, 0.1) is the lower one
    assert m.to_dict()["n_flipped"] == 2


# --- BPDA, EOT, defended models ----------------------------------------------------------------


def test_bpda_jpeg_forward_is_the_real_codec_and_backward_is_the_approximation() -> None:
    x = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    levels = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    real = torch.from_numpy(jpeg.roundtrip(levels, 30)).permute(0, 3, 1, 2).float() / 255
    w = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    for backward in ("identity", "diffjpeg"):
        xx = x.clone().requires_grad_(True)
        y = BPDAJPEG(30, backward=backward)(xx)
        assert torch.equal(y, real)
        (g,) = torch.autograd.grad((y * w).sum(), xx)
        if backward == "identity":
            assert torch.equal(g, w)
        else:
            x2 = x.clone().requires_grad_(True)
            (expected,) = torch.autograd.grad((DiffJPEG(30)(x2) * w).sum(), x2)
            assert torch.allclose(g, expected)


def test_bpda_slq_forward_equals_the_real_slq() -> None:
    x = torch.rand(2, 3, 24, 16, generator=torch.Generator().manual_seed(2))
    levels = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    real = jpeg.slq(levels, (20, 40, 60, 80), rng=np.random.default_rng(7))
    out = BPDASLQ((20, 40, 60, 80), backward="diffjpeg", rng=7)(x.requires_grad_(True))
    assert np.array_equal((out.detach() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy(), real)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad != 0).any()


def test_majority_vote_with_soft_tie_break() -> None:
    logits = torch.tensor([
        [[5.0, 0.0, 0.0], [0.0, 9.0, 0.0]],
        [[4.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
        [[0.0, 6.0, 0.0], [1.5, 0.0, 0.0]],
    ])  # (M=3, N=2, K=3)
    assert vote(logits, "majority").tolist() == [0, 1]  # sample 1: a 1-1-1 tie, class 1 most probable
    assert vote(logits, "soft")[0] == 0


def test_defended_models_attackable_and_predict_with_the_vote(model, batch) -> None:
    x, y = batch
    x, y = x[:8], y[:8]
    single = jpeg_defended(model, 50, backward="diffjpeg")
    assert torch.equal(single(x), model(BPDAJPEG(50)(x)))
    members = [model, model]
    ensemble = ensemble_defended(members, [30, 70], vote="majority")
    assert ensemble.member_logits(x).shape == (2, 8, CLASSES)
    adv = PGD(ensemble, eps=8 / 255, steps=3, random_start=False)(x, y)
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6
    assert not torch.equal(adv, x)
    assert predict(ensemble, adv).shape == (8,)
    with pytest.raises(InputError):
        DefendedModel(members, [None], vote="soft")


def test_eot_averages_over_random_slq_draws(model, batch) -> None:
    x, y = batch
    x, y = x[:6], y[:6]
    target = slq_defended([model], eot_samples=4, backward="diffjpeg", rng=0)
    assert isinstance(target, EOT)
    out = target(x)
    assert out.shape == (6, CLASSES)
    # deterministic model: EOT's mean equals the model itself
    assert torch.allclose(EOT(model, samples=3)(x), model(x), atol=1e-6)
    adv = FGSM(target, eps=8 / 255)(x, y)
    assert torch.isfinite(adv).all() and not torch.equal(adv, x)
    assert predict(target, x).shape == (6,)
