import math

import torch

from masking import mask_target

MASK = 99


def tokens(B=512, Q=4, T=40, seed=0):
    return torch.randint(0, MASK, (B, Q, T), generator=torch.Generator().manual_seed(seed))


def trained_level(masked):
    """The level q of each example: the lowest level that contains a MASK."""
    has = (masked == MASK).any(-1)                     # [B, Q]
    return has.float().argmax(1)


def test_level_structure_below_given_at_q_partial_above_fully_masked():
    x = tokens()
    masked, loss_mask = mask_target(x, MASK, torch.Generator().manual_seed(1))
    q = trained_level(masked)
    for b in range(x.shape[0]):
        lq = int(q[b])
        assert torch.equal(masked[b, :lq], x[b, :lq])              # levels below q untouched
        assert (masked[b, lq] == MASK).sum() >= 1                  # at least one masked at q
        assert (masked[b, lq + 1:] == MASK).all()                  # every level above q fully masked
        unmasked_q = masked[b, lq] != MASK
        assert torch.equal(masked[b, lq][unmasked_q], x[b, lq][unmasked_q])
        # loss mask = masked positions of level q only
        assert torch.equal(loss_mask[b, lq], masked[b, lq] == MASK)
        assert not loss_mask[b, :lq].any() and not loss_mask[b, lq + 1:].any()


def test_input_tokens_are_not_modified():
    x = tokens(B=8)
    before = x.clone()
    mask_target(x, MASK, torch.Generator().manual_seed(0))
    assert torch.equal(x, before)


def test_levels_are_chosen_uniformly():
    masked, _ = mask_target(tokens(B=4000, T=8), MASK, torch.Generator().manual_seed(2))
    counts = torch.bincount(trained_level(masked), minlength=4).float() / 4000
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.03)


def test_mask_fraction_follows_cosine_schedule_in_distribution():
    """frac = cos(pi/2 u), u ~ U(0,1): P(frac <= x) = 1 - (2/pi) arccos(x), mean 2/pi."""
    T = 200
    _, loss_mask = mask_target(tokens(B=4000, Q=1, T=T), MASK, torch.Generator().manual_seed(3))
    frac = loss_mask[:, 0].float().mean(-1)
    assert abs(frac.mean().item() - 2 / math.pi) < 0.02
    for x in (0.2, 0.5, 0.8, 0.95):
        expected = 1 - (2 / math.pi) * math.acos(x)
        assert abs((frac <= x).float().mean().item() - expected) < 0.03


def test_prefix_option_leaves_a_prefix_of_every_level_unmasked():
    x = tokens(B=300, T=50)
    masked, loss_mask = mask_target(x, MASK, torch.Generator().manual_seed(4), prefix_prob=1.0, max_prefix=0.5)
    first_masked = (masked == MASK).any(1).float().argmax(-1)      # first masked position per example
    assert (first_masked > 0).float().mean() > 0.9                 # almost every example has a prefix
    for b in range(300):
        p = int(first_masked[b])
        assert torch.equal(masked[b, :, :p], x[b, :, :p])
    assert loss_mask.any(-1).any(-1).all()                          # still something to learn per example


def test_same_generator_seed_gives_the_same_mask():
    x = tokens(B=16)
    a = mask_target(x, MASK, torch.Generator().manual_seed(5))[0]
    b = mask_target(x, MASK, torch.Generator().manual_seed(5))[0]
    assert torch.equal(a, b)
