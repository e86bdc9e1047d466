import math

import torch

from masking import Objective, mask_target, masked_loss, sample_levels

MASK = 99


def tokens(B=512, Q=4, T=40, seed=0):
    return torch.randint(0, MASK, (B, Q, T), generator=torch.Generator().manual_seed(seed))


def test_level_structure_below_given_at_q_partial_above_fully_masked():
    """Levels below q are given, level q is partly masked, levels above q are fully masked (Fig. 4)."""
    x = tokens()
    masked, loss_mask, q = mask_target(x, MASK, torch.Generator().manual_seed(1))
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
    """Masking returns a new tensor; the caller's tokens stay as they were."""
    x = tokens(B=8)
    before = x.clone()
    mask_target(x, MASK, torch.Generator().manual_seed(0))
    assert torch.equal(x, before)


def test_levels_are_chosen_uniformly():
    """The paper's objective trains each level equally often."""
    _, _, q = mask_target(tokens(B=4000, T=8), MASK, torch.Generator().manual_seed(2))
    counts = torch.bincount(q, minlength=4).float() / 4000
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.03)


def test_coarse_prob_draws_level_zero_that_often_and_the_rest_evenly():
    """The demo's coarse_prob: P(q = 0) = coarse_prob, the finer levels share the rest."""
    q = sample_levels(8000, 4, 0.7, torch.Generator().manual_seed(9))
    freq = torch.bincount(q, minlength=4).float() / 8000
    assert torch.allclose(freq, torch.tensor([0.7, 0.1, 0.1, 0.1]), atol=0.02)


def test_mask_fraction_follows_cosine_schedule_in_distribution():
    """frac = cos(pi/2 u), u ~ U(0,1): P(frac <= x) = 1 - (2/pi) arccos(x), mean 2/pi."""
    T = 200
    _, loss_mask, _ = mask_target(tokens(B=4000, Q=1, T=T), MASK, torch.Generator().manual_seed(3))
    frac = loss_mask[:, 0].float().mean(-1)
    assert abs(frac.mean().item() - 2 / math.pi) < 0.02
    for x in (0.2, 0.5, 0.8, 0.95):
        expected = 1 - (2 / math.pi) * math.acos(x)
        assert abs((frac <= x).float().mean().item() - expected) < 0.03


def test_prefix_is_unmasked_at_every_level_bounded_and_outside_the_loss():
    """A prompt prefix: every level given, at most max_prefix of T long, never scored."""
    B, T, max_prefix = 300, 50, 0.5
    x = tokens(B=B, T=T)
    masked, loss_mask, q = mask_target(x, MASK, torch.Generator().manual_seed(4), prefix_prob=1.0,
                                       max_prefix=max_prefix)
    first_masked = (masked == MASK).any(1).float().argmax(-1)      # first masked position per example
    assert (first_masked > 0).float().mean() > 0.9                 # almost every example has a prefix
    # below the top level, the level above q is masked right after the prefix: first_masked = prefix length
    assert first_masked[q < 3].max() <= max_prefix * T             # no prefix longer than the bound
    for b in range(B):
        p = int(first_masked[b])
        assert torch.equal(masked[b, :, :p], x[b, :, :p])
        assert not loss_mask[b, :, :p].any()                       # prefix positions are not in the loss
    assert loss_mask.any(-1).any(-1).all()                          # still something to learn per example


def test_same_generator_seed_gives_the_same_mask():
    """Every draw comes from the generator, so a seed repeats the mask."""
    x = tokens(B=16)
    a = mask_target(x, MASK, torch.Generator().manual_seed(5))[0]
    b = mask_target(x, MASK, torch.Generator().manual_seed(5))[0]
    assert torch.equal(a, b)


class _Recorder(torch.nn.Module):
    """Stands in for StemGen: uniform logits; records what the objective feeds it."""

    class cfg:
        mask_id = MASK

    def forward(self, context, masked, instrument, dropped, level):
        self.seen = (masked, instrument, dropped, level)
        return torch.zeros(masked.shape[0], masked.shape[-1], MASK, requires_grad=True)


def test_masked_loss_is_cross_entropy_over_the_masked_positions_of_level_q():
    """With uniform logits the loss is log(V) and the model sees the masked target of each example's level."""
    model = _Recorder()
    ctx, tgt = tokens(B=32, seed=1), tokens(B=32, seed=2)
    inst = torch.arange(32) % 17
    loss = masked_loss(model, ctx, tgt, inst, Objective(p_drop_context=0.0, p_drop_instrument=1.0), 17,
                       torch.Generator().manual_seed(0))
    masked, instrument, dropped, level = model.seen
    assert math.isclose(loss.item(), math.log(MASK), rel_tol=1e-5)
    assert (instrument == 17).all() and not dropped.any()           # drop probabilities 1 and 0 obeyed
    for b in range(32):                                            # level q: the lowest level with a MASK
        assert int(level[b]) == int((masked[b] == MASK).any(-1).float().argmax())
