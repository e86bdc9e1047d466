import math

import pytest
import torch

from masking import Objective, example_nll, harmony_plan, mask_target, masked_loss, sample_levels, shift_in_time

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


# ---- the timing term (ours): the target likelier with its context's timing than with the context shifted

class _Listener(torch.nn.Module):
    """Stands in for StemGen: predicts, at each position, the context's level-0 token there (a part that follows
    its context in time) when `listens`, else uniform logits; counts its calls."""

    class cfg:
        mask_id = MASK

    def __init__(self, listens: bool):
        super().__init__()
        self.listens, self.calls = listens, 0
        self.scale = torch.nn.Parameter(torch.tensor(5.0))

    def forward(self, context, masked, instrument, dropped, level):
        self.calls += 1
        B, _, T = masked.shape
        if not self.listens:
            return torch.zeros(B, T, MASK) * self.scale
        logits = torch.nn.functional.one_hot(context[:, 0], MASK).float() * self.scale
        return logits.masked_fill(dropped[:, None, None], 0.0)


def test_context_shift_rolls_each_example_by_thirty_to_seventy_percent_of_its_length():
    ctx = tokens(B=64, T=50, seed=3)
    out = shift_in_time(ctx, torch.Generator().manual_seed(0))
    shifts = []
    for b in range(64):
        s = [k for k in range(50) if torch.equal(torch.roll(ctx[b], k, dims=-1), out[b])]
        assert len(s) == 1                                         # a roll of the whole example, every level
        shifts.append(s[0])
    assert 15 <= min(shifts) and max(shifts) <= 35 and len(set(shifts)) > 5   # 30-70 % of T, drawn per example
    beat = shift_in_time(ctx, torch.Generator().manual_seed(0), 0.1, 0.2)
    short = [k for b in range(64) for k in range(50) if torch.equal(torch.roll(ctx[b], k, dims=-1), beat[b])]
    assert len(short) == 64 and 5 <= min(short) and max(short) <= 10           # the range asked for


def test_timing_term_charges_a_part_that_ignores_the_context_its_whole_margin():
    """A model that ignores the context is no likelier with the right timing: the loss is the paper's plus
    weight x margin; with weight 0 the model runs once and the loss is the paper's alone."""
    ctx, tgt, inst = tokens(B=16, seed=1), tokens(B=16, seed=2), torch.zeros(16, dtype=torch.long)
    g = lambda: torch.Generator().manual_seed(0)
    paper, deaf = Objective(p_drop_context=0.0), Objective(p_drop_context=0.0, shift_weight=2.0, shift_margin=0.5)
    model = _Listener(listens=False)
    base = masked_loss(model, ctx, tgt, inst, paper, 17, g())
    assert model.calls == 1
    total = masked_loss(model, ctx, tgt, inst, deaf, 17, g())
    assert model.calls == 3 and math.isclose(total.item(), base.item() + 2.0 * 0.5, rel_tol=1e-6)


def test_timing_term_vanishes_for_a_part_that_follows_its_context_in_time():
    """The target is the context (a part that moves with it) and every example trains level 0: with the right
    timing the listener is far surer than with the shifted context, so the term adds nothing."""
    ctx = tokens(B=16, seed=1)
    tgt, inst = ctx.clone(), torch.zeros(16, dtype=torch.long)
    knobs = dict(p_drop_context=0.0, p_drop_instrument=0.0, coarse_prob=1.0)
    timed = masked_loss(_Listener(True), ctx, tgt, inst, Objective(**knobs, shift_weight=1.0), 17,
                        torch.Generator().manual_seed(0))
    plain = masked_loss(_Listener(True), ctx, tgt, inst, Objective(**knobs), 17, torch.Generator().manual_seed(0))
    assert plain.item() < 1.0 and math.isclose(timed.item(), plain.item(), rel_tol=1e-6)


def test_example_nll_is_each_examples_mean_over_its_own_masked_positions():
    tgt = tokens(B=4, T=10, seed=5)
    masked, loss_mask, level = mask_target(tgt, MASK, torch.Generator().manual_seed(0))
    logits = torch.randn(4, 10, MASK, generator=torch.Generator().manual_seed(1))
    nll = example_nll(logits, tgt, loss_mask, level)
    for b in range(4):
        q, at = int(level[b]), loss_mask[b, int(level[b])]
        expect = torch.nn.functional.cross_entropy(logits[b][at], tgt[b, q][at])
        assert math.isclose(nll[b].item(), expect.item(), rel_tol=1e-5)


def test_timing_knobs_must_be_finite_and_not_negative():
    for bad in ({"shift_weight": -1.0}, {"shift_weight": float("nan")}, {"shift_margin": -0.1}):
        with pytest.raises(ValueError, match="--shift-weight"):
            Objective(**bad).check()
    for bad in ({"shift_min": 0.0}, {"shift_min": 0.5, "shift_max": 0.4}, {"shift_max": 1.0}):
        with pytest.raises(ValueError, match="--shift-min"):
            Objective(**bad).check()


def test_harmony_plan_moves_whole_segments_half_of_them_and_never_none():
    plan = harmony_plan(400, 100, 25, torch.Generator().manual_seed(0))
    assert plan.shape == (400, 100) and int(plan.min()) >= -5 and int(plan.max()) <= 6
    assert bool((plan != 0).any(1).all())                                  # every example has a moved beat
    for row in plan:                                                       # constant within each 25-frame segment
        starts = [k for k in range(1, 100) if row[k] != row[k - 1]]
        if starts:                                                         # its segments' offset, from a change
            first = starts[0] % 25
            assert all(k % 25 == first for k in starts)
            for a in range(first - 25 if first else 0, 100, 25):
                assert len(set(row[max(a, 0):a + 25].tolist())) == 1
    moved = (plan != 0).float().mean().item()
    assert 0.5 < moved < 0.7                                               # half, plus the one always moved
    assert len(set(plan[plan != 0].tolist())) == 11                        # every interval but the unison


def test_harmony_term_is_the_hinge_on_the_moved_context_and_needs_it():
    """A part that ignores the context pays the whole margin; a part that copies its context, with a negative
    unlike it, pays nothing; the term asks for the negative and says so when it is missing."""
    ctx, tgt, inst = tokens(B=16, seed=1), tokens(B=16, seed=2), torch.zeros(16, dtype=torch.long)
    g = lambda: torch.Generator().manual_seed(0)
    knobs = dict(p_drop_context=0.0, p_drop_instrument=0.0)
    base = masked_loss(_Listener(False), ctx, tgt, inst, Objective(**knobs), 17, g())
    term = Objective(**knobs, harmony_weight=2.0, harmony_margin=0.5)
    deaf = masked_loss(_Listener(False), ctx, tgt, inst, term, 17, g(), negative=tokens(B=16, seed=3))
    assert math.isclose(deaf.item(), base.item() + 2.0 * 0.5, rel_tol=1e-6)
    follows = dict(knobs, coarse_prob=1.0)
    plain = masked_loss(_Listener(True), ctx, ctx.clone(), inst, Objective(**follows), 17, g())
    moved = masked_loss(_Listener(True), ctx, ctx.clone(), inst, Objective(**follows, harmony_weight=1.0), 17, g(),
                        negative=tokens(B=16, seed=3))
    same = masked_loss(_Listener(True), ctx, ctx.clone(), inst, Objective(**follows, harmony_weight=1.0), 17, g(),
                       negative=ctx.clone())
    assert math.isclose(moved.item(), plain.item(), rel_tol=1e-6)          # far likelier with its own chords
    assert math.isclose(same.item(), plain.item() + 0.5, rel_tol=1e-6)     # a negative that is the context: no gain
    with pytest.raises(ValueError, match="negative context"):
        masked_loss(_Listener(True), ctx, tgt, inst, term, 17, g())
    for bad in ({"harmony_weight": -1.0}, {"harmony_margin": float("nan")}, {"harmony_segment": 0.0}):
        with pytest.raises(ValueError, match="--harmony-weight"):
            Objective(**bad).check()
