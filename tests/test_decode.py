import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import chord
from decode import (DEFAULT_WINDOW_SECONDS, STEPS_FRAMES, Sampling, causal_rank, cosine_schedule, generate_stem_batch,
                    generate_stem_tokens, generate_tokens, plan_windows, planned_steps, sample_tokens, steps_for,
                    window_frames)
from model import ModelConfig, StemGen
from training.checkpoint import load_model

CFG = ModelConfig(n_q=2, bins=16, dim=32, n_heads=2, n_layers=1, max_len=128)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return StemGen(CFG).eval()


def inputs(B=2, T=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, CFG.bins, (B, CFG.n_q, T), generator=g), torch.tensor([0, 5])[:B]


class Recorder(torch.nn.Module):
    """Wraps a model and keeps a copy of the target tokens seen at every forward pass."""

    def __init__(self, model):
        super().__init__()
        self.model, self.cfg, self.seen, self.batch_sizes = model, model.cfg, [], []

    def forward(self, context, target, instrument, context_dropped=None, level=None):
        self.seen.append((level, target[: context.shape[0]].clone()))
        self.batch_sizes.append(context.shape[0])
        return self.model(context, target, instrument, context_dropped, level=level)


def test_eq1_matches_hand_computation():
    conf = torch.tensor([[0.9, 0.1, 0.5, 0.2]])
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    rho = causal_rank(conf, 0.1, 0.3, 1.0, g1)
    X = torch.rand(1, 4, generator=g2)[0].tolist()
    N = 4
    expected = [0.1 * c + 0.3 * (1 - n / N) + 1.0 * X[n] for n, c in enumerate(conf[0].tolist())]
    assert torch.allclose(rho[0], torch.tensor(expected), atol=1e-6)


def test_cosine_schedule_ends_unmasked_and_never_increases():
    for M, S in [(20, 8), (1000, 128), (7, 32)]:
        left = cosine_schedule(M, S)
        assert len(left) == S and left[-1] == 0
        assert all(a >= b for a, b in zip([M] + left, left))
        assert left[0] == math.floor(M * math.cos(math.pi / 2 / S))


def test_only_causal_bias_unmasks_strictly_left_to_right(model):
    rec = Recorder(model)
    ctx, inst = inputs()
    generate_tokens(rec, ctx, inst, Sampling(steps=(300, 300), w_c=0.0, w_s=1.0, w_r=0.0, guidance="none"))
    for level, tgt in rec.seen:
        known = tgt[:, level] != CFG.mask_id            # [B, T]
        n = known.sum(1)
        for b in range(ctx.shape[0]):
            assert known[b, : n[b]].all() and not known[b, n[b]:].any()


def test_fixed_tokens_never_change_and_counts_follow_the_schedule(model):
    rec = Recorder(model)
    ctx, inst = inputs(T=30)
    sampling = Sampling(steps=(300, 150), guidance="none")
    steps = sampling.level_steps(30)                            # per STEPS_FRAMES frames: (9, 5) for 30
    assert steps == (9, 5)
    out = generate_tokens(rec, ctx, inst, sampling, generator=torch.Generator().manual_seed(0))
    for q in range(CFG.n_q):
        snaps = [t for level, t in rec.seen if level == q] + [out]
        for t in snaps:
            known = t[:, q] != CFG.mask_id
            assert torch.equal(t[:, q][known], out[:, q][known])      # never changed once fixed
            assert torch.equal(t[:, :q], out[:, :q])                   # lower levels complete and final
        counts = [int((t[0, q] == CFG.mask_id).sum()) for t in snaps]
        expected = [c for c in [30] + cosine_schedule(30, steps[q])]
        # a step that fixes nothing is skipped, so the observed counts are the schedule without repeats
        assert counts == sorted(set(expected), reverse=True)


def test_same_seed_same_tokens_and_different_seed_different_tokens(model):
    ctx, inst = inputs()
    run = lambda s: generate_tokens(model, ctx, inst, Sampling(steps=(200, 200)),
                                    generator=torch.Generator().manual_seed(s))
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


@pytest.mark.parametrize("mode,branches", [("none", 1), ("joint", 2), ("multi", 3)])
def test_every_guidance_mode_decodes_a_full_sequence_in_one_batched_pass(model, mode, branches):
    rec = Recorder(model)
    ctx, inst = inputs()
    out = generate_tokens(rec, ctx, inst, Sampling(steps=(4, 3), guidance=mode),
                          generator=torch.Generator().manual_seed(0))
    assert out.shape == ctx.shape
    assert (out != CFG.mask_id).all() and out.min() >= 0 and out.max() < CFG.bins
    assert set(rec.batch_sizes) == {branches * ctx.shape[0]}


class TimeBlind(torch.nn.Module):
    """A model that predicts each level's token histogram of the whole context at every position: timing-blind."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def forward(self, context, target, instrument, context_dropped=None, level=None):
        counts = torch.nn.functional.one_hot(context[:, level], self.cfg.bins).float().sum(1, keepdim=True)
        return torch.log1p(counts).expand(-1, context.shape[-1], -1).contiguous()


class WeakCopier(torch.nn.Module):
    """Prefers token 0 everywhere and, a little less, the context token at the same position."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def forward(self, context, target, instrument, context_dropped=None, level=None):
        one = torch.nn.functional.one_hot
        return one(context[:, level], self.cfg.bins).float() + 2.0 * one(torch.zeros_like(context[:, level]),
                                                                          self.cfg.bins).float()


def test_timing_guidance_changes_nothing_for_a_timing_blind_model_and_costs_one_more_branch():
    ctx, inst = inputs(T=24)
    runs = {}
    for lam in (0.0, 3.0):
        rec = Recorder(TimeBlind(CFG))
        runs[lam] = generate_tokens(rec, ctx, inst, Sampling(steps=(4, 3), scale_timing=lam),
                                    generator=torch.Generator().manual_seed(0))
        assert set(rec.batch_sizes) == {(3 + (lam > 0)) * ctx.shape[0]}
    assert torch.equal(runs[0.0], runs[3.0])


def test_timing_guidance_makes_a_part_follow_its_context_where_the_context_sounds_now():
    g = torch.Generator().manual_seed(1)
    ctx = torch.randint(1, CFG.bins, (8, CFG.n_q, 40), generator=g)
    inst = torch.zeros(8, dtype=torch.long)
    copied = {}
    for lam in (0.0, 2.0):
        out = generate_tokens(WeakCopier(CFG), ctx, inst, Sampling(steps=(6, 4), guidance="none", scale_timing=lam),
                              generator=torch.Generator().manual_seed(0))
        copied[lam] = (out == ctx).float().mean().item()
    assert copied[2.0] > copied[0.0] + 0.2


def test_prompt_tokens_are_kept_and_never_resampled(model):
    ctx, inst = inputs(T=24)
    prompt = torch.randint(0, CFG.bins, (2, CFG.n_q, 10), generator=torch.Generator().manual_seed(3))
    out = generate_tokens(model, ctx, inst, Sampling(steps=(4, 4)), prompt=prompt)
    assert torch.equal(out[:, :, :10], prompt)
    assert (out != CFG.mask_id).all()


def test_bad_arguments_give_clear_errors(model):
    ctx, inst = inputs()
    with pytest.raises(ValueError, match="guidance"):
        generate_tokens(model, ctx, inst, Sampling(steps=(2, 2), guidance="bogus"))
    with pytest.raises(ValueError, match="step count per level"):
        generate_tokens(model, ctx, inst, Sampling(steps=(2,)))
    with pytest.raises(ValueError, match="steps must be positive"):
        Sampling(steps=(2, 0))
    with pytest.raises(ValueError, match="temperature"):
        Sampling(temperature=0.0)
    with pytest.raises(ValueError, match="scale_timing"):
        Sampling(scale_timing=-1.0)
    with pytest.raises(ValueError, match="fraction of the window"):
        Sampling(timing_shift=1.0)
    with pytest.raises(ValueError, match="does not fit"):
        generate_tokens(model, ctx, inst, Sampling(steps=(2, 2)), prompt=ctx[:, :1])


def test_plan_windows_covers_sequence_with_training_length_windows():
    """Windows end at the sequence end, all of the training length; each prompt is what is already decoded."""
    for n, w, o in [(115, 40, 15), (100, 40, 0), (41, 40, 39), (400, 50, 25)]:
        plan = plan_windows(n, w, o)
        assert plan[0] == (0, w, 0) and plan[-1][1] == n
        for (s0, e0, _), (s1, e1, p1) in zip(plan, plan[1:]):
            assert e1 - s1 == w                              # every window has the training length
            assert p1 == e0 - s1 >= o                        # the prompt is exactly what is already decoded
            assert s1 > s0
    assert plan_windows(30, 40, 20) == [(0, 30, 0)]  # short context: one window of its own length


def test_window_defaults_to_20_s_with_half_overlap_and_must_fit_the_model():
    """Without a window the paper's 20 s crop is used, the overlap is half of it, and max_len bounds it."""
    assert DEFAULT_WINDOW_SECONDS == 20.0                # the paper's training crop (Sec. 3)
    window = round(DEFAULT_WINDOW_SECONDS * 50)          # frames at 50 Hz
    assert window_frames(50, 4096) == (window, window // 2)
    assert window_frames(50, 4096, 0.8, 0.3) == (40, 15)
    with pytest.raises(ValueError, match="max_len"):
        window_frames(50, window - 1)
    with pytest.raises(ValueError, match="--overlap"):
        window_frames(50, 4096, 2.0, 2.0)


# ---------------------------------------------------------------------------------------------------------
# Steps per decoded frame

class Copier(torch.nn.Module):
    """A model whose prediction is the context token at the same position and level (almost surely)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def forward(self, context, target, instrument, context_dropped=None, level=None):
        return 30.0 * torch.nn.functional.one_hot(context[:, level], self.cfg.bins).float()   # [B, T, V]


def count_steps(model, ctx, inst, sampling, **kw):
    """(forward passes, on_step calls, output) of one generate_tokens call."""
    rec, calls = Recorder(model), []
    out = generate_tokens(rec, ctx, inst, sampling, on_step=calls.append, **kw)
    return len(rec.seen), sum(calls), out


def test_steps_are_the_papers_at_1000_frames_and_scale_with_the_frames_decoded():
    paper = Sampling().steps
    assert STEPS_FRAMES == 1000 and paper == (128, 64, 32, 32)   # the paper's: 20 s targets at 50 Hz (Sec. 2.1.1)
    assert steps_for(paper, STEPS_FRAMES) == paper
    assert steps_for(paper, STEPS_FRAMES // 2) == (64, 32, 16, 16)
    assert steps_for(paper, 2 * STEPS_FRAMES) == (256, 128, 64, 64)
    for n in [1, 7, 125, 250, 333, STEPS_FRAMES - 1, STEPS_FRAMES + 1]:
        for s, k in zip(paper, steps_for(paper, n)):
            assert k >= 1 and (k - 1) * STEPS_FRAMES < s * n <= k * STEPS_FRAMES   # s n / STEPS_FRAMES rounded up
    counts = [steps_for(paper, n) for n in range(0, STEPS_FRAMES + 200, 7)]
    assert all(a <= b for x, y in zip(counts, counts[1:]) for a, b in zip(x, y))   # never fewer for more frames
    assert steps_for(paper, 0) == steps_for(paper, 1) == (1, 1, 1, 1)
    assert Sampling().level_steps(125) == steps_for(paper, 125)


def test_a_full_steps_frames_target_is_decoded_with_the_given_counts():
    """STEPS_FRAMES decoded frames run the given counts: the masked counts follow cosine_schedule(STEPS_FRAMES,
    S) for the given S."""
    torch.manual_seed(1)
    net = StemGen(replace(CFG, max_len=STEPS_FRAMES)).eval()
    ctx, inst = inputs(B=1, T=STEPS_FRAMES)
    sampling = Sampling(steps=(32, 16), guidance="none")
    rec = Recorder(net)
    generate_tokens(rec, ctx, inst, sampling, generator=torch.Generator().manual_seed(4))
    for q, S in enumerate(sampling.steps):
        counts = [int((t[0, q] == CFG.mask_id).sum()) for level, t in rec.seen if level == q] + [0]
        assert counts == sorted(set([STEPS_FRAMES] + cosine_schedule(STEPS_FRAMES, S)), reverse=True)


def test_decoding_half_the_frames_takes_about_half_the_forward_passes(model):
    ctx, inst = inputs(T=120)
    prompt = torch.randint(0, CFG.bins, (2, CFG.n_q, 60), generator=torch.Generator().manual_seed(3))
    sampling = Sampling(steps=(200, 100), guidance="none")
    passes_full, calls_full, _ = count_steps(model, ctx, inst, sampling)
    passes_half, calls_half, out = count_steps(model, ctx, inst, sampling, prompt=prompt)
    assert (calls_full, calls_half) == (sum(sampling.level_steps(120)), sum(sampling.level_steps(60))) == (36, 18)
    assert 0.4 <= passes_half / passes_full <= 0.6
    assert torch.equal(out[:, :, :60], prompt) and (out != CFG.mask_id).all()


def test_planned_steps_count_every_step_of_a_windowed_stem(model):
    ctx, _ = inputs(B=1, T=115)
    for sampling in [Sampling(steps=(300, 100)), Sampling(steps=(3, 2))]:
        calls = []
        generate_stem_tokens(model, ctx, 4, sampling, 40, 15, on_step=calls.append)
        assert sum(calls) == planned_steps(sampling, plan_windows(115, 40, 15))


def test_a_copy_model_gives_each_context_back_through_overlapping_windows():
    """No seam: a model that copies its context gives back every context of a batch (contexts that differ, one
    instrument each) through overlapping windows."""
    ctx, inst = inputs(B=2, T=115)
    assert len(plan_windows(115, 40, 15)) > 1 and not torch.equal(ctx[0], ctx[1])
    sampling = Sampling(steps=(200, 100))
    out = generate_stem_tokens(Copier(CFG), ctx, inst, sampling, 40, 15, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, ctx)


def test_a_batch_of_stems_is_the_codec_decode_of_their_windowed_tokens(tiny_app_checkpoint):
    """generate_stem_batch encodes contexts of one length together, decodes their windows and gives back audio
    at the contexts' length: with conftest's copy model, each context's own codec round trip."""
    net, tok, _ = load_model(tiny_app_checkpoint)
    rng = np.random.default_rng(0)
    xs = np.stack([chord(p, 3.0, tok.sample_rate, rng) for p in ((57, 61), (64, 68, 71))])              # [2, S]
    sampling = Sampling(steps=(200, 100))
    ctx = tok.encode(torch.from_numpy(xs)[:, None])                                                     # [2, Q, T]
    assert len(plan_windows(ctx.shape[-1], 40, 20)) > 1
    stems = generate_stem_batch(net, tok, xs, [0, 9], sampling, 40, 20, torch.Generator().manual_seed(0))
    assert stems.shape == xs.shape
    np.testing.assert_allclose(stems, tok.decode(ctx)[:, 0, :xs.shape[1]].numpy(), atol=1e-5)


def test_temperature_zero_is_greedy_with_the_tokens_probability_as_confidence():
    logp = torch.log_softmax(torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    tokens, conf = sample_tokens(logp, 0.0, torch.Generator().manual_seed(1))
    again, _ = sample_tokens(logp, 0.0, torch.Generator().manual_seed(2))
    assert torch.equal(tokens, logp.argmax(-1)) and torch.equal(tokens, again)
    assert torch.allclose(conf, logp.exp().max(-1).values)


class PeakedFineLevels(torch.nn.Module):
    """Logits with a mild preference for token 3 at every level: sampling at temperature 1 draws other tokens."""

    def __init__(self):
        super().__init__()
        self.cfg = CFG
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, context, target, instrument, context_dropped=None, level=None):
        logits = torch.zeros(context.shape[0], context.shape[-1], CFG.bins)
        logits[..., 3] = 1.0
        return logits + self.w


def test_fine_temperature_zero_decodes_finer_levels_greedily_and_leaves_level_0_sampled():
    ctx, inst = inputs(T=40)
    sampling = Sampling(steps=(8, 8), guidance="none", fine_temperature=0.0)
    assert sampling.level_temperature(0) == 1.0 and sampling.level_temperature(1) == 0.0
    assert Sampling(temperature=0.5).level_temperature(1) == 0.5
    out = generate_tokens(PeakedFineLevels(), ctx, inst, sampling, generator=torch.Generator().manual_seed(0))
    assert (out[:, 1] == 3).all()                  # greedy: always the most likely token
    assert (out[:, 0] != 3).any()                  # level 0 still sampled at temperature 1
    with pytest.raises(ValueError, match="fine_temperature"):
        Sampling(fine_temperature=-1.0)


def test_the_default_window_is_the_papers_training_crop_as_data_says():
    """decode.py keeps its own copy of the paper's 20 s crop (Sec. 3) rather than importing data.py for it."""
    import data
    assert DEFAULT_WINDOW_SECONDS == data.CROP_SECONDS == 20.0
