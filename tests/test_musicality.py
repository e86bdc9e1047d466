"""musicality.py: notes or noise (harmonic share, codec references), the transposition test, the picture."""
from collections import Counter
import os

import numpy as np
import pytest
import torch
import yaml

from metrics import harmony
from metrics import musicality as M
from metrics import pictures
from conftest import chord, random_triads, write_corpus

SR = 16000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two pieces in all 12 transpositions (24 tracks of piano, strings and bass, 2 s each)."""
    return write_corpus(str(tmp_path_factory.mktemp("corpus") / "pieces"))


def test_harmonic_share_is_high_for_notes_low_for_noise_and_zero_for_silence():
    rng = np.random.default_rng(0)
    tone = chord([57], 2.0, SR, rng)                           # A3 with 6 partials
    triads = random_triads(0.5, 4, SR, rng)
    noise = (0.1 * rng.standard_normal(2 * SR)).astype(np.float32)
    assert M.harmonic_share(tone, SR) > 0.8 and M.harmonic_share(triads, SR) > 0.7
    assert M.harmonic_share(noise, SR) < 0.2
    assert M.harmonic_share(np.zeros(SR, np.float32), SR) == 0.0
    with pytest.raises(ValueError, match="mono"):
        M.harmonic_share(np.zeros((2, SR), np.float32), SR)


def test_transposition_score_of_a_part_that_ignores_its_context_averages_to_zero_over_12_keys():
    """Algebra: the same stem against a context chroma rolled through all 12 keys scores 0 on average, exactly."""
    rng = np.random.default_rng(1)
    for _ in range(5):
        stem, context = rng.random(12), rng.random(12)
        scores = [harmony.transposition_score(stem, np.roll(context, t))[0] for t in range(12)]
        assert abs(np.mean(scores)) < 1e-12
        assert max(scores) > 0.1                               # ... though single keys do not score 0


def test_transposition_score_is_highest_at_the_right_shift_for_a_part_that_follows():
    rng = np.random.default_rng(2)
    context = rng.random(12)
    follows = context + 0.1 * rng.random(12)
    score, best = harmony.transposition_score(follows, context)
    assert score > 0.8 and best
    r = harmony.shift_correlations(follows, context)
    assert abs(r.sum()) < 1e-12 and score == pytest.approx(12 / 11 * r[0])  # the 12 shifts' correlations sum to 0
    score_wrong, best_wrong = harmony.transposition_score(follows, np.roll(context, 5))
    assert score_wrong < score and not best_wrong
    assert harmony.transposition_score(np.ones(12), context) == (0.0, False)     # a flat chroma follows nothing
    with pytest.raises(ValueError, match="12 bins"):
        harmony.transposition_score(np.ones(11), context)


def test_a_model_that_copies_its_context_follows_every_transposition(corpus):
    """The context itself, returned as the part: well above 0, the right shift always best, and at least as high
    as the real bass that plays the chords' roots (the ceiling), which is clearly above 0 too."""
    r = M.transposition_test(corpus, "bass", lambda contexts, inst: [c.copy() for c in contexts], SR, 2.0)
    assert r["n"] == 24 and r["pieces"] == 2 and r["transpositions"] == 24 and r["instrument"] == "Bass"
    gen, real = r["generated"], r["real"]
    assert gen["lo"] > 0.5 and gen["right_shift_best"] == 24
    assert real["lo"] > 0.2 and gen["mean"] >= real["mean"]
    assert all(x["lo"] <= x["mean"] <= x["hi"] for x in (gen, real))


def test_a_model_that_ignores_its_context_scores_about_zero_over_the_12_transpositions(corpus):
    """The same audio whatever the context: its right shift is rarely best, and its mean score is near 0."""
    fixed = chord([60, 64, 67], 2.0, SR, np.random.default_rng(5))
    calls = []

    def constant(contexts, instruments):
        calls.append(instruments)
        return [fixed for _ in contexts]

    r = M.transposition_test(corpus, "bass", constant, SR, 2.0)
    assert calls == [[4] * 24]                                  # one call, every context asks for a bass (id 4)
    assert abs(r["generated"]["mean"]) < 0.1 and r["generated"]["right_shift_best"] <= 6
    assert r["generated"]["mean"] < r["real"]["mean"] - 0.2


def _lined_up(grid):
    """Mean correlation between two keys' rolled-back chroma (as key_consistency, for one chunk's grid)."""
    c = np.corrcoef(grid)
    return float(c[~np.eye(len(grid), dtype=bool)].mean())


def test_back_in_key_lines_up_a_part_that_follows_and_turns_one_that_ignores_into_diagonals(corpus):
    """Rolled back into the written key, a copied context and the real bass give the same chroma in every key;
    a fixed chord keeps its pitch classes, so rolled back by k its chroma is its chroma rolled by -k."""
    fixed = chord([60, 64, 67], 2.0, SR, np.random.default_rng(5))
    follows = M.transposition_test(corpus, "bass", lambda contexts, inst: [c.copy() for c in contexts], SR, 2.0)
    ignores = M.transposition_test(corpus, "bass", lambda contexts, inst: [fixed for _ in contexts], SR, 2.0)
    chunks = sorted({r["chunk"] for r in follows["examples"]})
    assert len(chunks) == 2                                       # two pieces, one stretch of each
    for chunk in chunks:
        keys, copied = M.back_in_key(follows["examples"], "generated", chunk)
        assert keys == list(range(12)) and copied.shape == (12, 12) and np.allclose(copied.max(axis=1), 1.0)
        _, context = M.back_in_key(follows["examples"], "context", chunk)
        _, real = M.back_in_key(follows["examples"], "real", chunk)
        _, constant = M.back_in_key(ignores["examples"], "generated", chunk)
        assert np.allclose(copied, context)
        assert _lined_up(copied) > 0.6 and _lined_up(real) > 0.6          # -1/11 for a part that ignores the key
        assert all(np.allclose(constant[k], np.roll(constant[0], -k)) for k in keys)
        assert _lined_up(constant) == pytest.approx(-1 / 11)
    copied, fixed = follows["generated"]["consistency"], ignores["generated"]["consistency"]
    assert copied["chunks"] == fixed["chunks"] == 2 and copied["lo"] > 0.6
    assert follows["real"]["consistency"]["lo"] > 0.6
    assert fixed["mean"] == pytest.approx(-1 / 11) and fixed["hi"] < 0
    with pytest.raises(ValueError, match="no 'round trip' chroma"):
        M.back_in_key(follows["examples"], "round trip", chunks[0])
    with pytest.raises(ValueError, match="no example of chunk"):
        M.back_in_key(follows["examples"], "generated", "nowhere@0")


def test_plot_transposition_draws_the_chunks_heard_in_most_keys_and_refuses_rows_without_chunks(corpus, tmp_path):
    r = M.transposition_test(corpus, "bass", lambda contexts, inst: [c.copy() for c in contexts], SR, 2.0)
    path = pictures.plot_transposition(str(tmp_path / "t.png"), r["examples"], chunks=1)
    png = open(path, "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    with pytest.raises(ValueError, match="examples"):
        pictures.plot_transposition(str(tmp_path / "none.png"), [{"piece": "p0", "transpose": 0}])
    assert not os.path.exists(tmp_path / "none.png")


def test_transposition_test_refuses_a_folder_without_corpus_entries_or_without_the_class(corpus, tmp_path):
    copy = str(tmp_path / "plain")
    write_corpus(copy, pieces=1, transpositions=[0, 1])
    meta_path = os.path.join(copy, "Track00000", "metadata.yaml")
    meta = yaml.safe_load(open(meta_path))
    del meta["corpus"]
    yaml.safe_dump(meta, open(meta_path, "w"))
    with pytest.raises(ValueError, match="corpus"):
        M.transposition_test(copy, "bass", lambda c, k: c, SR, 1.0)
    with pytest.raises(ValueError, match="no track with a organ stem"):
        M.transposition_test(corpus, "organ", lambda c, k: c, SR, 1.0)


def test_the_window_is_where_the_part_sounds_longest_and_the_same_in_every_key():
    """The crop rule (RMS over the window) passes from the window where a late part plays its first second; the
    window chosen is the one where it sounds longest, the earliest of equals, and one start serves all keys."""
    part = np.concatenate([np.zeros(3 * SR), np.ones(3 * SR)]).astype(np.float32) * 0.1
    context = np.full(6 * SR, 0.1, np.float32)
    heard = M.sounding_frames(part, context, SR, 2.0)
    assert sorted(heard) == [2.0, 3.0, 4.0] and heard[2.0] == 10 and heard[3.0] == heard[4.0] == 20
    assert M.sounding_start([heard]) == 3.0                            # not 2.0, the first that passes
    assert M.sounding_start([M.sounding_frames(context, part, SR, 2.0)]) == 2.0   # the context must pass the rule
    assert M.sounding_frames(np.zeros(6 * SR, np.float32), context, SR, 2.0) == {}
    assert M.sounding_start([{}]) is None and M.sounding_start([]) is None
    early = M.sounding_frames(context, context, SR, 2.0)               # sounds throughout: the earliest start
    assert M.sounding_start([early]) == 0.0
    assert M.sounding_start([heard, early]) == 3.0                     # one start for both renderings
    assert M.sounding_start([{0.0: 20}, {1.0: 20}]) is None            # no start passes in both


def test_random_fine_tokens_keep_level_0_and_draw_the_rest_uniformly():
    tokens = torch.randint(0, 8, (3, 4, 500), generator=torch.Generator().manual_seed(0))
    a = M.random_fine_tokens(tokens, 64, torch.Generator().manual_seed(1))
    b = M.random_fine_tokens(tokens, 64, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(a[:, 0], tokens[:, 0])
    fine = a[:, 1:]
    assert int(fine.min()) >= 0 and int(fine.max()) < 64
    assert (fine >= 8).float().mean() > 0.8                     # from all 64 ids, not the 8 the input used
    assert torch.bincount(fine.reshape(-1), minlength=64).min() > 0


def test_round_trips_through_a_codec_keep_the_length_and_random_fine_levels_change_the_sound(tmp_path):
    from spectral import fit as spectral_fit
    root = write_corpus(str(tmp_path / "c"), pieces=1, transpositions=[0, 5])
    codec = spectral_fit.fit_spectral(root, None, n_q=2, bins=16, dim=16, sample_rate=SR, n_fft=512,
                                  seconds_per_track=2, kmeans_iters=3, griffin_lim_iters=4, progress=False)
    x = random_triads(0.25, 5, SR, np.random.default_rng(3))[:SR + 123]        # not a whole number of frames
    same = M.round_trip(codec, x)
    assert same.shape == x.shape and same.dtype == np.float32 and np.array_equal(same, M.round_trip(codec, x))
    noisy = M.round_trip_random_fine(codec, x, torch.Generator().manual_seed(0))
    again = M.round_trip_random_fine(codec, x, torch.Generator().manual_seed(0))
    assert noisy.shape == x.shape and np.array_equal(noisy, again) and not np.allclose(noisy, same)


def test_plot_examples_writes_a_png_and_refuses_no_examples(tmp_path):
    rng = np.random.default_rng(4)
    rows = [{"context": random_triads(0.5, 4, SR, rng), "generated": random_triads(0.5, 4, SR, rng),
             "real": random_triads(0.5, 4, SR, rng), "label": f"piano {i}"} for i in range(2)]
    path = pictures.plot_examples(str(tmp_path / "ex.png"), rows, SR)
    png = open(path, "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    with pytest.raises(ValueError, match="at least one example"):
        pictures.plot_examples(str(tmp_path / "none.png"), [], SR)
    with pytest.raises(ValueError, match="no real"):
        pictures.plot_examples(str(tmp_path / "bad.png"), [{"context": rows[0]["context"], "generated": rows[0]["real"]}], SR)
    assert not os.path.exists(tmp_path / "none.png")


def test_transposition_references_through_a_codec_keep_the_key_only_as_far_as_the_codec_does(corpus):
    """With a codec, the real part's round trip and its random-finer-levels round trip are scored too: through a
    codec that keeps the audio they score as the real part; through one that drops pitch they score about 0."""

    class Keeps:                         # level 0 carries everything: the round trips are the audio itself
        bins, n_q = 4, 2

        def encode(self, x):
            self.x = x
            return torch.zeros(1, 2, 5, dtype=torch.long)

        def decode(self, tokens):
            return self.x

    class Drops(Keeps):                  # everything decodes to one fixed chord, whatever went in
        def decode(self, tokens):
            return torch.from_numpy(chord([60, 64, 67], 2.0, SR, np.random.default_rng(5)))[None, None]

    same = lambda contexts, inst: [c.copy() for c in contexts]
    kept = M.transposition_test(corpus, "bass", same, SR, 2.0, codec=Keeps())
    for who in ("round trip", "random finer levels"):
        assert kept[who]["mean"] == pytest.approx(kept["real"]["mean"], abs=1e-6)
    dropped = M.transposition_test(corpus, "bass", same, SR, 2.0, codec=Drops())
    for who in ("round trip", "random finer levels"):
        assert abs(dropped[who]["mean"]) < 0.1 and dropped[who]["mean"] < dropped["real"]["mean"] - 0.2
    assert "round trip" not in M.transposition_test(corpus, "bass", same, SR, 2.0)


def test_key_nll_scores_read_the_own_key_against_the_eleven_others():
    """Gain = mean NLL under the other keys' contexts minus under the own; rank = how many others score lower."""
    flat = np.full((12, 12), 3.0)                               # the context changes nothing
    gain, rank = M.key_nll_scores(flat)
    assert np.all(gain == 0) and np.all(rank == 0)
    follows = flat + 1.0 - np.eye(12)                           # the own key's context is 1 nat better
    gain, rank = M.key_nll_scores(follows)
    assert np.allclose(gain, 1.0) and np.all(rank == 0)
    gain, rank = M.key_nll_scores(flat + np.eye(12))            # the own key's context is the worst
    assert np.allclose(gain, -1.0) and np.all(rank == 11)


class LowestPitchCodec:
    """One token per 0.256 s frame: the pitch class of the lowest spectral peak above 0.3 of the frame's largest
    (the root of a root-position chord, the note of a bass). 12 tokens, one level."""
    sample_rate, frame, n_q, bins = SR, 4096, 1, 12

    def encode(self, x):
        x = x[:, 0].numpy()
        frames = x[:, :x.shape[1] // self.frame * self.frame].reshape(len(x), -1, self.frame)
        mag = np.abs(np.fft.rfft(frames * np.hanning(self.frame), n=4 * self.frame))       # [B, T, F]
        first = (mag > 0.3 * mag.max(-1, keepdims=True)).argmax(-1)                     # lowest strong bin [B, T]
        window = np.take_along_axis(mag, first[..., None] + np.arange(32), -1)          # and the 32 above it
        peak = first + window.argmax(-1)                                                # ... its peak
        hz = peak.clip(min=1) * self.sample_rate / (4 * self.frame)
        return torch.from_numpy(np.round(12 * np.log2(hz / 440.0) + 69).astype(np.int64) % 12)[:, None, :]


class TokenModel(torch.nn.Module):
    """Level-0 logits from the context's tokens: `weight` times a one-hot of the context's token (0: ignores it)."""

    def __init__(self, weight):
        super().__init__()
        self.weight = weight
        self.cfg = type("Cfg", (), {"mask_id": LowestPitchCodec.bins})()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, context, target, instrument, context_dropped=None, level=None):
        return self.weight * torch.nn.functional.one_hot(context[:, 0], LowestPitchCodec.bins).float()


def test_key_nll_test_credits_a_model_that_reads_the_key_and_not_one_that_ignores_it(corpus):
    """On two pieces in all twelve keys: a model that predicts the bass from the context's root scores its own
    key's context best every time; a model that ignores the context gains exactly 0 nats."""
    reads = M.key_nll_test(TokenModel(4.0), LowestPitchCodec(), corpus, "bass", 2.0)
    assert reads["n"] == 24 and reads["chunks"] == 2 and reads["pieces"] == 2
    assert reads["gain"]["lo"] > 1.0 and reads["own_best"] == 24 and reads["mean_rank"] == 0
    ignores = M.key_nll_test(TokenModel(0.0), LowestPitchCodec(), corpus, "bass", 2.0)
    assert ignores["gain"]["mean"] == pytest.approx(0.0, abs=1e-6)


def test_key_nll_test_skips_chunks_missing_keys_and_refuses_when_none_is_whole(tmp_path):
    few = write_corpus(str(tmp_path / "few"), pieces=1, transpositions=range(6))
    with pytest.raises(ValueError, match="all twelve keys"):
        M.key_nll_test(TokenModel(4.0), LowestPitchCodec(), few, "bass", 2.0)


def test_key_nll_test_skips_a_chunk_whose_keys_were_cropped_at_different_starts(corpus):
    """The token test compares one chunk's renderings as the same music in twelve keys: a chunk whose renderings
    start at different times is skipped and counted, and the other chunk is scored as before."""
    codec = LowestPitchCodec()
    examples, skipped = M.transposition_examples(corpus, "bass", codec.sample_rate, 2.0)
    assert {e["start"] for e in examples} == {0.0}
    first = sorted({e["chunk"] for e in examples})[0]
    moved = [dict(e, start=1.0) if e["chunk"] == first and e["transpose"] == 5 else e for e in examples]
    r = M.key_nll_test(TokenModel(4.0), codec, corpus, "bass", 2.0, examples=(moved, skipped))
    assert r["chunks"] == 1 and r["n"] == 12 and r["skipped"]["chunk cropped at different starts in different keys"] == 12


def test_both_transposition_tests_use_examples_read_once(corpus):
    """evaluate.py reads a transposition folder once for both tests: given the examples, each test scores them
    as it would have read them, uses them rather than the folder, and leaves the caller's skip counts alone."""
    codec, copy = LowestPitchCodec(), (lambda contexts, inst: [c.copy() for c in contexts])
    read = M.transposition_examples(corpus, "bass", codec.sample_rate, 2.0)
    skipped = dict(read[1])
    assert (M.key_nll_test(TokenModel(4.0), codec, corpus, "bass", 2.0, examples=read)
            == M.key_nll_test(TokenModel(4.0), codec, corpus, "bass", 2.0))
    assert (M.transposition_test(corpus, "bass", copy, codec.sample_rate, 2.0, examples=read)
            == M.transposition_test(corpus, "bass", copy, codec.sample_rate, 2.0))
    assert dict(read[1]) == skipped
    with pytest.raises(ValueError, match="no track with a bass stem"):
        M.transposition_test(corpus, "bass", copy, codec.sample_rate, 2.0, examples=([], Counter()))


def test_a_part_whose_rests_hold_a_faint_fixed_tone_scores_as_if_they_were_silent(corpus, monkeypatch):
    """The copied context's first second, then a steady E-flat 90 dB down (a codec's decoded rest) instead of
    silence: with the chroma gate it scores exactly as with silence and its chroma moves with every key; without
    the gate its faint rests, each scaled to full weight, hold the same pitch class in every key and pull it
    towards a part that ignores the key."""
    from metrics import listening
    t = np.arange(2 * SR) / SR
    faint = (0.1 * 10 ** (-90 / 20) * np.sin(2 * np.pi * 311.13 * t)).astype(np.float32)

    def part(rest):
        return lambda contexts, instruments: [np.concatenate([c[:SR], rest[:len(c) - SR]]) for c in contexts]

    def run():
        r = M.transposition_test(corpus, "bass", part(faint), SR, 2.0)
        chunks = sorted({x["chunk"] for x in r["examples"]})
        return r["generated"]["mean"], min(_lined_up(M.back_in_key(r["examples"], "generated", c)[1]) for c in chunks)

    silent = M.transposition_test(corpus, "bass", part(np.zeros_like(faint)), SR, 2.0)["generated"]["mean"]
    gated, gated_lined = run()
    monkeypatch.setattr(listening, "CHROMA_GATE_DB", -np.inf)                 # evaluate.py --chroma-gate off
    plain, plain_lined = run()
    assert gated == pytest.approx(silent, abs=1e-3) and gated > 0.3 and gated_lined > 0.8
    assert plain < gated - 0.08 and plain_lined < gated_lined - 0.2, (plain, plain_lined)
