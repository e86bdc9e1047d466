"""FAD: the Frechet distance, the Gaussian fit, and the embeddings (VGGish from local weights, offline log-mel).

16 kHz, 128-d embeddings, 0.96 s examples and the FAD tool's 1 s windows every 0.5 s are VGGish's and the tool's
published values: these tests check the code against them, so they are written out as literals."""
import numpy as np
import pytest
import scipy.linalg
import torch

from metrics import fad


# ------------------------------------------------------------------------------------------------- FAD

def test_fad_of_a_population_with_itself_is_zero():
    emb = np.random.default_rng(0).standard_normal((300, 16))
    assert fad.frechet_audio_distance(emb, emb) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 1.0])  # standard deviations
    closed = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)  # commuting covariances
    assert fad.frechet_distance(mu1, np.diag(s1 ** 2), mu2, np.diag(s2 ** 2)) == pytest.approx(closed)
    rng = np.random.default_rng(1)  # and fitted to samples, FAD approaches it
    a = mu1 + s1 * rng.standard_normal((40000, 3))
    b = mu2 + s2 * rng.standard_normal((40000, 3))
    assert fad.frechet_audio_distance(a, b) == pytest.approx(closed, rel=0.03)


def test_frechet_distance_is_real_and_finite_for_singular_covariances():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((5, 32)), rng.standard_normal((5, 32)) + 0.5  # rank-4 covariances
    with pytest.warns(UserWarning, match="5 embeddings for a 32-dimensional"):
        d = fad.frechet_audio_distance(a, b)
    assert isinstance(d, float) and np.isfinite(d) and d > 0


# ------------------------------------------------------------------------- front end: resampling, framing

def _tone(f, sr, seconds=2.0, amp=0.5):
    return amp * np.sin(2 * np.pi * f * np.arange(int(seconds * sr)) / sr)


def _gain_db(y, f, sr=16000):
    """Level in dB of the f Hz component of a (resampled) unit-amplitude tone, edges left out."""
    n = np.arange(y.size) / sr
    basis = np.stack([np.sin(2 * np.pi * f * n), np.cos(2 * np.pi * f * n)], axis=1)[2000:-2000]
    coef = np.linalg.lstsq(basis, y[2000:-2000], rcond=None)[0]
    return 20 * np.log10(np.hypot(*coef))


def test_resampling_to_16k_is_resampys_kaiser_best_as_vggish():
    import resampy
    rng = np.random.default_rng(0)
    for sr in (32000, 44100, 22050):
        x = rng.standard_normal(sr).astype(np.float32) * 0.3
        ref = resampy.resample(x.astype(np.float64), sr, 16000, filter="kaiser_best")
        np.testing.assert_allclose(fad.resample_to_vggish(x, sr), ref, rtol=1e-9, atol=1e-12)
    x = rng.standard_normal(16000)
    assert np.array_equal(fad.resample_to_vggish(x, 16000), x)  # 16 kHz passes untouched
    assert fad.resample_to_vggish(np.ones(1), 44100).size == 0  # too short for one sample: empty, no error
    emb = fad.LogMelEmbedding(framing="vggish")  # and the population embedding resamples with it
    x = rng.standard_normal(2 * 32000) * 0.3
    direct = emb(resampy.resample(x, 32000, 16000, filter="kaiser_best"))
    np.testing.assert_allclose(fad.embed_population(emb, [x], 32000), direct, rtol=1e-6, atol=1e-6)


def test_resampling_rolls_off_where_kaiser_best_does_and_soxr_would_not():
    import resampy.filters
    import soxr
    cutoff = resampy.filters.get_filter("kaiser_best")[2] * 8000  # rolloff x the output Nyquist (~7.34 kHz)
    down = lambda f: _gain_db(fad.resample_to_vggish(_tone(f, 32000, amp=1.0), 32000), f)
    assert abs(down(1000)) < 0.05 and abs(down(5000)) < 0.05  # passband
    assert down(cutoff) == pytest.approx(-6.02, abs=0.5)  # a windowed sinc has half amplitude at its cutoff
    assert -12 < down(7400) < -6 and -4 < down(7200) < -1  # the issue measured -8.6 and -2.2 dB
    flat = _gain_db(soxr.resample(_tone(7400, 32000, amp=1.0), 32000, 16000, quality="HQ"), 7400)
    assert flat > -0.5  # soxr keeps it: the test tells the two apart


def test_vggish_framing_gives_no_example_to_clips_under_0975_s():
    rng = np.random.default_rng(1)
    for n in (100, 15599, 15600, 30959, 30960, 47000):
        x = rng.standard_normal(n) * 0.3
        # example k covers 96 frames of 400 samples, 160 apart, from sample 96 * 160 * k
        starts = [k * 96 * 160 for k in range(n) if k * 96 * 160 + 95 * 160 + 400 <= n]
        p = fad.vggish_patches(x)
        assert p.shape == (len(starts), 96, 64), n
        for k, s in enumerate(starts):  # each example is the log-mel of its own samples only
            np.testing.assert_allclose(p[k], fad.vggish_log_mel(x[s: s + 15600]), rtol=1e-5, atol=1e-5)
    assert fad.LogMelEmbedding(framing="vggish")(np.zeros(100)).shape == (0, 128)


def test_fad_tool_framing_normalises_then_takes_1s_windows_every_half_second():
    rng = np.random.default_rng(2)
    for n in (15999, 16000, 23999, 24000, 48000, 50000):
        x = rng.uniform(-0.3, 0.3, n)
        x[n // 3] = 0.8  # the largest sample value ...
        x[n // 2] = -0.95  # ... not the largest magnitude: the tool divides by np.amax
        starts = list(range(0, n - 16000 + 1, 8000))  # the tool's window loop, 16 kHz, step 8000
        y = x / 0.8
        p = fad.fad_tool_patches(x)
        assert p.shape == (len(starts), 96, 64), n
        for k, s in enumerate(starts):  # each window's own first example (96 of its 98 frames)
            np.testing.assert_allclose(p[k], fad.vggish_patches(y[s: s + 16000])[0], rtol=1e-5, atol=1e-4)
    loud = _tone(440, 16000, 3.0, amp=0.6)
    np.testing.assert_allclose(fad.fad_tool_patches(0.5 * loud), fad.fad_tool_patches(loud), atol=1e-4)
    quiet = _tone(440, 16000, 3.0, amp=0.02)  # gain at most 20 dB: divided by 0.1, not by 0.02
    np.testing.assert_allclose(fad.fad_tool_patches(quiet), fad.vggish_log_mel(10 * quiet)[
        np.arange(5)[:, None] * 50 + np.arange(96)], rtol=1e-5, atol=1e-4)
    assert not np.allclose(fad.fad_tool_patches(quiet), fad.fad_tool_patches(loud), atol=0.1)


def test_population_leaves_out_clips_without_examples_counts_them_and_errors_when_none_remain():
    emb = fad.LogMelEmbedding()  # fad-tool: 1 s minimum; 2 s gives windows at 0, 0.5, 1 s
    clips = [_tone(440, 32000, 2.0), _tone(440, 32000, 0.99), _tone(660, 32000, 2.0)]
    with pytest.warns(UserWarning, match="1 of 3 clips are shorter than 1 s"):
        assert fad.embed_population(emb, clips, 32000).shape == (6, 128)
    vggish_framing = fad.LogMelEmbedding(framing="vggish")  # 0.975 s minimum
    assert fad.embed_population(vggish_framing, [_tone(440, 32000, 0.98)] * 2, 32000).shape == (2, 128)
    with pytest.raises(fad.FadError, match="none of the 2 clips gives an example"):
        fad.embed_population(vggish_framing, [_tone(440, 32000, 0.97)] * 2, 32000)


def test_every_embedding_records_its_framing():
    default = fad.embedding_record(fad.load_embedding("logmel"))
    assert default["framing"] == fad.DEFAULT_FRAMING == "fad-tool" and "1 s window" in default["note"]
    assert default["resampler"] == "resampy kaiser_best" and default["min_clip_seconds"] == 1.0
    other = fad.embedding_record(fad.load_embedding("logmel", framing="vggish"))
    assert other["framing"] == "vggish" and other["min_clip_seconds"] == pytest.approx(0.975)
    assert "waveform_to_examples" in other["note"] and default["name"] == other["name"] == "logmel-stats"
    with pytest.raises(fad.FadError, match="unknown FAD framing 'overlap'"):
        fad.load_embedding("logmel", framing="overlap")


# --------------------------------------------------------------------------------------- embeddings

def test_logmel_embedding_gives_one_row_per_example_and_separates_signals():
    t = np.arange(3 * 16000) / 16000
    assert fad.LogMelEmbedding()(np.sin(2 * np.pi * 440 * t)).shape == (5, 128)  # windows every 0.5 s
    assert fad.LogMelEmbedding(framing="vggish")(np.sin(2 * np.pi * 440 * t)).shape == (3, 128)  # 0.96 s
    emb = fad.LogMelEmbedding(framing="vggish")
    rng = np.random.default_rng(0)
    tones = [0.3 * np.sin(2 * np.pi * f * t) for f in rng.uniform(200, 400, 20)]
    noises = [0.3 * rng.standard_normal(t.size) for _ in range(20)]
    tones2 = [0.3 * np.sin(2 * np.pi * f * t) for f in rng.uniform(200, 400, 20)]
    e = lambda xs: fad.embed_population(emb, xs, 16000)
    with pytest.warns(UserWarning):  # 60 patches for 128 dimensions
        assert fad.frechet_audio_distance(e(tones), e(tones2)) < fad.frechet_audio_distance(e(tones), e(noises))


def test_vggish_needs_local_weights_with_a_clear_message(tmp_path):
    with pytest.raises(fad.FadError, match="--vggish-weights PATH"):
        fad.load_embedding("vggish", None)
    with pytest.raises(fad.FadError, match="file not found"):
        fad.load_embedding("vggish", str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(fad.FadError, match="not VGGish weights"):
        fad.load_embedding("vggish", str(bad))


def test_vggish_loads_torchvggish_style_state_dict(tmp_path):
    torch.manual_seed(0)
    net = fad.VGGish()
    path = tmp_path / "vggish.pth"
    torch.save(net.state_dict(), path)
    x = np.random.default_rng(0).standard_normal(2 * 16000).astype(np.float32) * 0.1
    for framing, rows, patches in (("fad-tool", 3, fad.fad_tool_patches), ("vggish", 2, fad.vggish_patches)):
        emb = fad.load_embedding("vggish", str(path), framing=framing)
        out = emb(x)
        assert out.shape == (rows, 128) and np.all(np.isfinite(out))
        with torch.no_grad():  # the loaded network is the saved one
            ref = net.eval()(torch.from_numpy(patches(x))).numpy()
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
        record = fad.embedding_record(emb)
        assert record["comparable_with_published_fad"] is True and record["framing"] == framing
    assert emb(np.zeros(1000, dtype=np.float32)).shape == (0, 128)  # no example, no network call


def test_vggish_mel_filterbank_covers_125_to_7500_hz():
    w = fad.vggish_mel_matrix()  # [257, 64]
    hz = np.linspace(0, 8000, 257)
    assert w.shape == (257, 64) and np.all(w >= 0)
    assert np.all(w[hz < 125] == 0) and np.all(w[hz > 7500] == 0)
    assert np.all(w.max(axis=0) > 0.5)  # every band has a peak


# ------------------------------------------------------------------------- song resamples (evaluate.py intervals)

def test_trace_sqrt_product_matches_sqrtm_also_for_singular_covariances():
    rng = np.random.default_rng(5)
    for n in (200, 6):                                     # full rank, then rank 5 in 16 dimensions
        s1 = np.cov(rng.standard_normal((n, 16)), rowvar=False)
        s2 = np.cov(rng.standard_normal((n, 16)) * np.linspace(0.5, 2, 16), rowvar=False)
        assert fad.trace_sqrt_product(s1, s2) == pytest.approx(np.trace(np.real(scipy.linalg.sqrtm(s1 @ s2))),
                                                                rel=1e-5, abs=1e-6)


def test_bootstrap_frechet_taking_every_song_once_is_the_point_fad_and_counts_repeats():
    rng = np.random.default_rng(6)
    real = [rng.standard_normal((k, 8)) + 3.0 for k in (5, 7, 4, 6)]                  # 4 clips of 3 songs
    gen = [rng.standard_normal((k, 8)) * 1.5 for k in (6, 3, 5, 8)]
    songs = np.array([0, 1, 1, 2])
    mr, mg = fad.song_moments(real, songs, 3), fad.song_moments(gen, songs, 3)
    point = fad.frechet_audio_distance(np.concatenate(real), np.concatenate(gen))
    twice_first = [0, 0, 2]                              # song 0 taken twice, song 2 once, song 1 not at all
    picked = lambda clips: np.concatenate([clips[0], clips[0], clips[3]])
    boots = fad.bootstrap_frechet(mr, mg, np.array([[1.0, 1.0, 1.0], np.bincount(twice_first, minlength=3)]))
    assert boots[0] == pytest.approx(point, rel=1e-6)
    assert boots[1] == pytest.approx(fad.frechet_audio_distance(picked(real), picked(gen)), rel=1e-6)
    assert np.isnan(fad.bootstrap_frechet(mr, mg, np.array([[0.0, 0.0, 0.0]]))[0])  # no embeddings: no FAD
