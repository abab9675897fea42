"""RP2 stickers on the tiny synthetic model: only the mask changes, EOT over the physical transforms,
and a learned sticker beats a random one on held-out images under fresh transformations."""

from __future__ import annotations

import pytest
import torch

from edge_guard.errors import InputError
from edge_guard.training.attacks import RP2, PhysicalTransforms, physical_views, predict, sticker_mask
from tests.training.test_apgd import batch, model  # noqa: F401  (fixtures)
from tests.training.test_attacks import synthetic

torch.set_num_threads(1)
CAMERA = PhysicalTransforms(scale=(0.95, 1.05), rotation=5.0, perspective=0.02, brightness=(0.9, 1.1),
                            contrast=(0.95, 1.05), jpeg=(70,))  # mild: the tiny model was not trained on views


def test_masks_cover_about_a_tenth() -> None:
    for kind in ("bars", "square"):
        m = sticker_mask(32, 32, kind)
        assert m.shape == (1, 1, 32, 32) and 0.07 < float(m.mean()) < 0.13 and set(m.unique().tolist()) == {0.0, 1.0}
    with pytest.raises(InputError):
        sticker_mask(32, 32, "circle")


def test_transforms_are_seeded_and_vary() -> None:
    x = synthetic(4, seed=3)[0]
    a = CAMERA(x, torch.Generator().manual_seed(0))
    b = CAMERA(x, torch.Generator().manual_seed(0))
    c = CAMERA(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == x.shape and 0 <= a.min() and a.max() <= 1


def test_sticker_changes_only_the_mask_and_beats_a_random_sticker(model) -> None:  # noqa: F811
    x, y = synthetic(64, seed=5)
    keep = predict(model, x) == y
    x, y = x[keep], y[keep]
    craft, held = (x[:24], y[:24]), (x[24:], y[24:])
    mask = sticker_mask(16, 16, "square")
    attack = RP2(model, mask, steps=40, lr=0.5, eot=2, transforms=CAMERA, seed=0)
    out = attack(*craft)
    assert torch.equal(out * (1 - mask), craft[0] * (1 - mask))  # nothing outside the mask moved
    assert attack.sticker.shape == (1, 3, 16, 16)

    def fooled(sticker: torch.Tensor | None) -> float:
        views = physical_views(held[0], CAMERA, 3, seed=99, sticker=sticker, mask=mask)
        return float((predict(model, views) != held[1].repeat(3)).float().mean())

    random_sticker = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    # measured: 0.70 learned, 0.09 random, 0.18 without a sticker
    assert fooled(attack.sticker) > max(fooled(random_sticker), fooled(None)) + 0.3
