"""FAD: the Frechet distance, the Gaussian fit, and the embeddings (VGGish from local weights, offline log-mel)."""
import numpy as np
import pytest
import torch

import fad


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


# --------------------------------------------------------------------------------------- embeddings

def test_logmel_embedding_gives_one_row_per_patch_and_separates_signals():
    emb = fad.LogMelEmbedding()
    t = np.arange(3 * 16000) / 16000
    assert emb(np.sin(2 * np.pi * 440 * t)).shape == (3, 128)  # 0.96 s patches
    assert emb(np.zeros(100)).shape == (1, 128)  # short clips are padded to one patch
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
    emb = fad.load_embedding("vggish", str(path))
    x = np.random.default_rng(0).standard_normal(2 * 16000).astype(np.float32) * 0.1
    out = emb(x)
    assert out.shape == (2, 128) and np.all(np.isfinite(out))
    with torch.no_grad():  # the loaded network is the saved one
        ref = net.eval()(torch.from_numpy(fad.vggish_patches(x))).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert fad.embedding_record(emb)["comparable_with_published_fad"] is True


def test_vggish_mel_filterbank_covers_125_to_7500_hz():
    w = fad.vggish_mel_matrix()  # [257, 64]
    hz = np.linspace(0, 8000, 257)
    assert w.shape == (257, 64) and np.all(w >= 0)
    assert np.all(w[hz < 125] == 0) and np.all(w[hz > 7500] == 0)
    assert np.all(w.max(axis=0) > 0.5)  # every band has a peak
