import math

import pytest
import torch

from guidance import (combine_branches, drop_conditions, guidance_branches, guided_logprobs, shifted_in_time,
                      timing_guided)


def logsoftmax(v):
    m = max(v)
    z = math.log(sum(math.exp(x - m) for x in v)) + m
    return [x - z for x in v]


def test_eq3_matches_hand_computation():
    u, a, i = [0.1, 0.5, -1.0], [2.0, 0.0, 0.3], [-0.2, 1.0, 0.7]
    la, li = 3.0, 2.0
    lu, lpa, lpi = logsoftmax(u), logsoftmax(a), logsoftmax(i)
    raw = [la * pa + li * pi + (1 - la - li) * pu for pu, pa, pi in zip(lu, lpa, lpi)]
    expected = logsoftmax(raw)
    got = guided_logprobs(torch.tensor(u), [torch.tensor(a), torch.tensor(i)], [la, li])
    assert torch.allclose(got, torch.tensor(expected), atol=1e-5)


def test_one_source_is_eq2():
    g = torch.Generator().manual_seed(0)
    uncond, cond = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    lam = 2.5
    eq2 = lam * torch.log_softmax(cond, -1) + (1 - lam) * torch.log_softmax(uncond, -1)
    assert torch.allclose(guided_logprobs(uncond, [cond], [lam]), torch.log_softmax(eq2, -1), atol=1e-5)


def test_scale_one_with_one_source_returns_the_conditional_distribution():
    g = torch.Generator().manual_seed(1)
    uncond, cond = torch.randn(3, 11, generator=g), torch.randn(3, 11, generator=g)
    assert torch.allclose(guided_logprobs(uncond, [cond], [1.0]), torch.log_softmax(cond, -1), atol=1e-6)


def test_scales_of_one_source_zero_drop_it_from_eq3():
    g = torch.Generator().manual_seed(2)
    u, a, i = (torch.randn(4, 9, generator=g) for _ in range(3))
    assert torch.allclose(guided_logprobs(u, [a, i], [2.0, 0.0]), guided_logprobs(u, [a], [2.0]), atol=1e-5)


def test_guidance_raises_probability_of_what_the_condition_prefers():
    uncond = torch.zeros(4)
    cond = torch.tensor([1.0, 0.0, 0.0, 0.0])
    p1 = guided_logprobs(uncond, [cond], [1.0]).exp()[0]
    p3 = guided_logprobs(uncond, [cond], [3.0]).exp()[0]
    assert p3 > p1


def test_conditions_are_dropped_independently_at_their_rates():
    inst = torch.arange(20000) % 17
    new_inst, ctx_dropped = drop_conditions(inst, 17, 0.3, 0.2, torch.Generator().manual_seed(0))
    inst_dropped = new_inst == 17
    assert abs(ctx_dropped.float().mean() - 0.3) < 0.015
    assert abs(inst_dropped.float().mean() - 0.2) < 0.015
    assert abs((ctx_dropped & inst_dropped).float().mean() - 0.06) < 0.01
    assert torch.equal(new_inst[~inst_dropped], inst[~inst_dropped])


def test_branches_hold_the_conditions_of_each_guidance_mode_in_order():
    """"multi" asks for p(t), p(t | c_a), p(t | c_i); "joint" for p(t), p(t | c_a, c_i); "none" for one pass."""
    inst = torch.tensor([3, 5])
    ids, dropped = guidance_branches("multi", 17, inst)
    assert ids.tolist() == [17, 17, 17, 17, 3, 5]              # instrument dropped, dropped, kept
    assert dropped.tolist() == [True, True, False, False, True, True]   # context dropped, kept, dropped
    ids, dropped = guidance_branches("joint", 17, inst)
    assert ids.tolist() == [17, 17, 3, 5] and dropped.tolist() == [True, True, False, False]
    ids, dropped = guidance_branches("none", 17, inst)
    assert ids.tolist() == [3, 5] and dropped.tolist() == [False, False]


def test_combined_branches_are_eq3_for_multi_and_eq2_for_joint():
    """combine_branches applies the mode's equation to the batch of guidance_branches."""
    g = torch.Generator().manual_seed(3)
    u, a, i = (torch.randn(2, 5, 7, generator=g) for _ in range(3))   # [B, T, V] per branch
    multi = combine_branches("multi", torch.cat([u, a, i]), 3.0, 2.0)
    assert torch.allclose(multi, guided_logprobs(u, [a, i], [3.0, 2.0]))
    joint = combine_branches("joint", torch.cat([u, a]), 2.5, 9.0)   # lambda_i plays no part in eq. 2
    assert torch.allclose(joint, guided_logprobs(u, [a], [2.5]))
    assert torch.allclose(combine_branches("none", a, 3.0, 3.0), torch.log_softmax(a, -1))


def test_unknown_guidance_mode_is_refused():
    """An unknown mode names the valid ones."""
    with pytest.raises(ValueError, match="multi"):
        guidance_branches("bogus", 17, torch.tensor([0]))


# ---------------------------------------------------------------------------------------------------------
# Timing guidance (ours, not the paper's)

def test_timing_guidance_leaves_a_prediction_that_ignores_timing_as_eq3_made_it():
    """If the shifted context predicts what the context in place does, the contrast is 0: eq. 3 unchanged."""
    g = torch.Generator().manual_seed(4)
    guided, cond = torch.log_softmax(torch.randn(3, 9, generator=g), -1), torch.randn(3, 9, generator=g)
    assert torch.allclose(timing_guided(guided, cond, cond.clone(), 4.0), guided, atol=1e-6)
    assert torch.allclose(timing_guided(guided, cond, torch.randn(3, 9, generator=g), 0.0), guided, atol=1e-6)


def test_timing_guidance_matches_hand_computation_and_favours_what_the_timing_adds():
    guided, cond, shifted, lam = [0.2, -0.4, 0.1], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], 2.0
    raw = [g + lam * (c - s) for g, c, s in zip(logsoftmax(guided), logsoftmax(cond), logsoftmax(shifted))]
    got = timing_guided(torch.tensor(logsoftmax(guided)), torch.tensor(cond), torch.tensor(shifted), lam)
    assert torch.allclose(got, torch.tensor(logsoftmax(raw)), atol=1e-5)
    before = torch.tensor(logsoftmax(guided)).exp()
    assert got.exp()[0] > before[0] and got.exp()[1] < before[1]   # in-time token up, shifted-time token down


def test_the_timing_branch_copies_the_conditions_of_the_branch_it_contrasts():
    """multi: p(t | c_a) is contrasted, so the added branch drops the instrument and keeps the context; joint and
    none: the branch with both conditions."""
    inst = torch.tensor([3, 5])
    ids, dropped = guidance_branches("multi", 17, inst, timing=True)
    assert ids.tolist()[-2:] == [17, 17] and dropped.tolist()[-2:] == [False, False] and len(ids) == 8
    for mode in ("joint", "none"):
        ids, dropped = guidance_branches(mode, 17, inst, timing=True)
        assert ids.tolist()[-2:] == [3, 5] and dropped.tolist()[-2:] == [False, False]


def test_combined_branches_with_timing_add_the_contrast_of_the_last_branch():
    g = torch.Generator().manual_seed(5)
    u, a, i, s = (torch.randn(2, 5, 7, generator=g) for _ in range(4))
    got = combine_branches("multi", torch.cat([u, a, i, s]), 3.0, 2.0, 1.5)
    assert torch.allclose(got, timing_guided(guided_logprobs(u, [a, i], [3.0, 2.0]), a, s, 1.5), atol=1e-6)


def test_a_context_shifted_in_time_keeps_its_sounds_and_moves_them_by_half_its_length():
    ctx = torch.arange(2 * 3 * 10).reshape(2, 3, 10)
    out = shifted_in_time(ctx)
    assert torch.equal(out.sort(-1).values, ctx.sort(-1).values)       # the same tokens, so the same key
    assert torch.equal(out[..., 5:], ctx[..., :5]) and torch.equal(out[..., :5], ctx[..., 5:])
    assert torch.equal(shifted_in_time(ctx, 0.2)[..., 2:], ctx[..., :8])        # a fifth of 10 frames: 2
