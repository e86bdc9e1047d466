import numpy as np
import pytest
import torch

from metrics import listening
from conftest import random_triads
from model import ModelConfig, StemGen

V, Q, T = 16, 2, 40


class FakeModel(torch.nn.Module):
    """Stands in for StemGen at level 0: confident in a given token per position, else uniform."""

    def __init__(self, uses_context: bool):
        super().__init__()
        self.uses_context = uses_context
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.cfg = ModelConfig(n_q=Q, bins=V)

    def forward(self, context, target, instrument, dropped, level=0):
        assert (target == self.cfg.mask_id).all()                   # the whole target is masked
        logits = torch.zeros(context.shape[0], context.shape[-1], V) + self.w
        if self.uses_context:                                       # predicts the context's level-0 token
            hot = torch.nn.functional.one_hot(context[:, 0], V).float() * 4.0
            logits = logits + hot * (~dropped)[:, None, None]
        return logits


def pairs(n_songs=16, per_song=16, seed=0):
    """Held-out pairs whose level-0 target equals the context's level 0 (the context determines it)."""
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randint(0, V, (n_songs * per_song, Q, T), generator=g)
    tgt = torch.randint(0, V, ctx.shape, generator=g)
    tgt[:, 0] = ctx[:, 0]
    return {"context": ctx, "target": tgt, "instrument": torch.zeros(len(ctx), dtype=torch.long),
            "song": torch.arange(n_songs).repeat_interleave(per_song)}


def test_a_model_that_follows_its_context_scores_positive_gains_and_listens():
    """The context determines the target: dropping, swapping or shifting it all cost nats."""
    r = listening.listening_report(FakeModel(uses_context=True), pairs(), min_shift=5)
    for g in r["gains"].values():
        assert g["lo"] > 0.5 and g["lo"] <= g["mean"] <= g["hi"]
    assert r["conditions"]["true_context"]["acc"] == 1.0
    assert r["verdict"].startswith("listens and follows it in time")
    assert r["pairs"] == 256 and r["songs"] == 16


def test_a_model_that_ignores_its_context_scores_zero_and_does_not_listen():
    """Every condition gives the same NLL, so every gain and interval is 0."""
    r = listening.listening_report(FakeModel(uses_context=False), pairs(), min_shift=5)
    for g in r["gains"].values():
        assert abs(g["mean"]) < 1e-6 and abs(g["lo"]) < 1e-6 and abs(g["hi"]) < 1e-6
    assert r["verdict"].startswith("does not listen yet")


@pytest.mark.slow
def test_a_tiny_stemgen_trained_where_the_context_determines_the_target_listens():
    """The real network and the real report: 150 steps on level 0 with target = f(context) give a gain."""
    torch.manual_seed(0)
    cfg = ModelConfig(n_q=Q, bins=V, dim=64, n_heads=4, n_layers=2, max_len=64)
    m = StemGen(cfg)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(150):
        ctx = torch.randint(0, V, (16, Q, T), generator=g)
        tgt = (ctx * 3 + 1) % V
        logits = m(ctx, torch.full_like(tgt, cfg.mask_id), torch.zeros(16, dtype=torch.long), level=0)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), tgt[:, 0].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    held_out = pairs(seed=2)
    held_out["target"][:, 0] = (held_out["context"][:, 0] * 3 + 1) % V
    r = listening.listening_report(m, held_out, min_shift=5)
    assert r["gains"]["over_dropped"]["lo"] > 0.5 and r["gains"]["over_other_song"]["lo"] > 0.5


def test_other_song_order_never_pairs_a_context_with_its_own_song():
    """Condition (c) must use another song's context for every pair, even with uneven songs."""
    song = torch.tensor([0] * 10 + [1] * 3 + [2] * 2)
    order, fallbacks = listening.other_song_order(song)
    assert (song[order] != song).all() and fallbacks == 0


def test_other_song_context_lacks_the_target_class_when_the_own_context_does():
    """A pair whose context has no bass gets another song's context without bass; one that has it may take any."""
    rng = np.random.default_rng(0)
    n, bass = 60, 4
    song = np.repeat(np.arange(6), 10)
    instrument = rng.integers(0, 6, n)
    held = rng.random((n, 17)) < 0.5
    held[np.arange(n), instrument] = rng.random(n) < 0.5                  # about half hold their target's class
    order, fallbacks = listening.other_song_order(song, instrument, held)
    order = order.numpy()
    assert (song[order] != song).all() and fallbacks == 0
    lacking = ~held[np.arange(n), instrument]
    assert lacking.any() and not held[order, instrument][lacking].any()
    # every other song's context holds bass: the pairs without bass fall back, and are counted
    song2, inst2 = np.array([0, 0, 1, 1]), np.full(4, bass)
    held2 = np.zeros((4, 17), bool)
    held2[[2, 3], bass] = True                                            # song 1's contexts hold bass
    order2, fallbacks2 = listening.other_song_order(song2, inst2, held2)
    assert fallbacks2 == 2 and (song2[order2.numpy()] != song2).all()
    with pytest.raises(ValueError, match="both"):
        listening.other_song_order(song2, inst2)


def test_shifted_context_is_the_same_context_rolled_by_at_least_min_shift():
    """Condition (d): same tokens, moved in time by min_shift..T-min_shift frames."""
    ctx = torch.arange(T).repeat(8, Q, 1)                               # token = frame index
    out = listening.shift_context(ctx, 10, torch.Generator().manual_seed(0))
    shift = (-out[:, 0, 0]) % T                                         # frame 0 now holds frame -shift
    assert ((shift >= 10) & (shift <= T - 10)).all()
    for b in range(8):
        assert torch.equal(out[b], torch.roll(ctx[b], int(shift[b]), dims=-1))


def test_song_bootstrap_resamples_songs_not_pairs():
    """Pairs of one song move together: one song carrying all the gain gives a wide interval."""
    song = np.repeat(np.arange(16), 16)
    even = np.ones(256)
    one_song = np.where(song == 0, 16.0, 0.0)                           # same mean (1.0), all in song 0
    m1, lo1, hi1 = listening.song_bootstrap(even, song)
    m2, lo2, hi2 = listening.song_bootstrap(one_song, song)
    assert m1 == m2 == 1.0 and lo1 == hi1 == 1.0
    assert lo2 == 0.0 and hi2 > 2.0


def test_chroma_check_prefers_the_context_a_stem_was_made_for():
    """Stems that double their context's chords agree with it more than with another song's chords."""
    sr, rng = 16000, np.random.default_rng(0)
    contexts = [random_triads(1.0, 6, sr, rng) for _ in range(8)]
    stems = [c + 0.01 * rng.standard_normal(len(c)).astype(np.float32) for c in contexts]
    r = listening.chroma_check(stems, contexts, list(range(8)), sr)
    assert r["frame"]["lo"] > 0.2 and r["frame"]["own"] > 0.9
    assert r["key"]["own"] > r["key"]["other"]


def test_chroma_treats_frames_far_below_the_clips_loudest_as_silence():
    """A note, then a faint fixed tone 100 dB down (what a codec may leave in a rest): librosa alone scales the
    faint frames to full weight, so the time-averaged chroma holds the faint tone's pitch class; the gate
    zeroes them, as digital silence is, and keeps the note's frames as they were."""
    sr = 16000
    t = np.arange(2 * sr) / sr
    x = np.sin(2 * np.pi * 220.0 * t).astype(np.float32)               # A3 for the first second
    x[sr:] = 1e-5 * np.sin(2 * np.pi * 311.13 * t[sr:])                # then E-flat 4, 100 dB down
    gated, plain = listening.chroma(x, sr), listening.chroma(x, sr, gate_db=-np.inf)
    assert gated.shape == plain.shape
    assert plain.mean(1).argmax() in (3, 9) and plain.mean(1)[3] > 0.3          # E-flat counts as much as A
    assert gated.mean(1).argmax() == 9 and gated.mean(1)[3] < 0.05
    loud = gated.max(0) > 0
    assert 0.3 < loud.mean() < 0.7 and np.allclose(gated[:, loud], plain[:, loud])
    quiet = listening.chroma(0.001 * x[:sr], sr)                         # the gate is relative: a quiet clip
    assert np.allclose(quiet, listening.chroma(x[:sr], sr), atol=1e-4)  # keeps all its frames
