"""FAD, KL/MIRDD, the embeddings, the sweeps, and the Sec. 3.2 protocol end to end on a tiny model."""
import json
import os
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

import checkpoint
import evaluate
from decode import Sampling


# ------------------------------------------------------------------------------------------------- FAD

def test_fad_of_a_population_with_itself_is_zero():
    emb = np.random.default_rng(0).standard_normal((300, 16))
    assert evaluate.fad(emb, emb) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 1.0])  # standard deviations
    closed = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)  # commuting covariances
    assert evaluate.frechet_distance(mu1, np.diag(s1 ** 2), mu2, np.diag(s2 ** 2)) == pytest.approx(closed)
    rng = np.random.default_rng(1)  # and fitted to samples, FAD approaches it
    a = mu1 + s1 * rng.standard_normal((40000, 3))
    b = mu2 + s2 * rng.standard_normal((40000, 3))
    assert evaluate.fad(a, b) == pytest.approx(closed, rel=0.03)


def test_frechet_distance_is_real_and_finite_for_singular_covariances():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((5, 32)), rng.standard_normal((5, 32)) + 0.5  # rank-4 covariances
    with pytest.warns(UserWarning, match="5 embeddings for a 32-dimensional"):
        d = evaluate.fad(a, b)
    assert isinstance(d, float) and np.isfinite(d) and d > 0


# ------------------------------------------------------------------------------------------ KL, MIRDD

def test_kl_of_identical_histograms_is_zero_and_matches_definition():
    h = np.array([3.0, 0.0, 7.0, 1.0])
    assert evaluate.kl_divergence(h, h) == pytest.approx(0.0, abs=1e-12)
    expected = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)
    assert evaluate.kl_divergence([1, 1], [1, 3], alpha=0.0) == pytest.approx(expected)


def test_kl_smoothing_keeps_disjoint_supports_finite():
    d = evaluate.kl_divergence([5, 0], [0, 5], alpha=1.0)
    assert np.isfinite(d) and d > 0
    assert evaluate.kl_divergence([5, 0], [0, 5], alpha=0.1) > d  # less smoothing, larger divergence


def _desc(key, pitches):
    return {"key": [key], "pitch_range": [int(np.ptp(pitches))], "unique_pitch_classes": [len(set(np.mod(pitches, 12)))],
            "percussive_density": [2], "beats_per_bar": [4], "chord_variety": [1], "chord_alteration_ratio": [0.0],
            "note_pitches": list(pitches), "note_pitch_classes": [p % 12 for p in pitches],
            "chord_labels": ["C:maj"], "structure_labels": ["A"]}


def test_mirdd_is_zero_for_equal_populations_and_grows_with_mismatch():
    ref = [_desc("C major", [60, 64, 67]), _desc("G major", [67, 71, 74])]
    total, per = evaluate.mirdd(ref, list(reversed(ref)))
    assert total == pytest.approx(0.0, abs=1e-12) and set(per) == set(evaluate.mir.DESCRIPTORS)
    near = evaluate.mirdd(ref, [_desc("C major", [60, 64, 67]), _desc("D major", [62, 66, 69])])[0]
    far = evaluate.mirdd(ref, [_desc("F# major", [30, 90]), _desc("F# major", [31, 91])])[0]
    assert 0 < near < far


# --------------------------------------------------------------------------------------- embeddings

def test_logmel_embedding_gives_one_row_per_patch_and_separates_signals():
    emb = evaluate.LogMelEmbedding()
    t = np.arange(3 * 16000) / 16000
    assert emb(np.sin(2 * np.pi * 440 * t)).shape == (3, 128)  # 0.96 s patches
    assert emb(np.zeros(100)).shape == (1, 128)  # short clips are padded to one patch
    rng = np.random.default_rng(0)
    tones = [0.3 * np.sin(2 * np.pi * f * t) for f in rng.uniform(200, 400, 20)]
    noises = [0.3 * rng.standard_normal(t.size) for _ in range(20)]
    tones2 = [0.3 * np.sin(2 * np.pi * f * t) for f in rng.uniform(200, 400, 20)]
    e = lambda xs: evaluate.embed_population(emb, xs, 16000)
    with pytest.warns(UserWarning):  # 60 patches for 128 dimensions
        assert evaluate.fad(e(tones), e(tones2)) < evaluate.fad(e(tones), e(noises))


def test_vggish_needs_local_weights_with_a_clear_message(tmp_path):
    with pytest.raises(evaluate.EvaluateError, match="--vggish-weights PATH"):
        evaluate.load_embedding("vggish", None)
    with pytest.raises(evaluate.EvaluateError, match="file not found"):
        evaluate.load_embedding("vggish", str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(evaluate.EvaluateError, match="not VGGish weights"):
        evaluate.load_embedding("vggish", str(bad))


def test_vggish_loads_torchvggish_style_state_dict(tmp_path):
    torch.manual_seed(0)
    net = evaluate.VGGish()
    path = tmp_path / "vggish.pth"
    torch.save(net.state_dict(), path)
    emb = evaluate.load_embedding("vggish", str(path))
    x = np.random.default_rng(0).standard_normal(2 * 16000).astype(np.float32) * 0.1
    out = emb(x)
    assert out.shape == (2, 128) and np.all(np.isfinite(out))
    with torch.no_grad():  # the loaded network is the saved one
        ref = net.eval()(torch.from_numpy(evaluate.vggish_patches(x))).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert evaluate.embedding_record(emb)["comparable_with_published_fad"] is True


def test_vggish_mel_filterbank_covers_125_to_7500_hz():
    w = evaluate.vggish_mel_matrix()  # [257, 64]
    hz = np.linspace(0, 8000, 257)
    assert w.shape == (257, 64) and np.all(w >= 0)
    assert np.all(w[hz < 125] == 0) and np.all(w[hz > 7500] == 0)
    assert np.all(w.max(axis=0) > 0.5)  # every band has a peak


# ------------------------------------------------------------------------------------------- sweeps

def test_guidance_sweep_follows_table_1_groups():
    s = evaluate.sweep_settings("guidance", Sampling(), scales=(2.0, 4.0))
    groups = [g for g, _, _ in s]
    assert groups.count("lambda_i = lambda_a = 1.0") == 1
    assert groups.count("lambda_i > 1.0, lambda_a = 1.0") == 2
    assert groups.count("lambda_i > 1.0, lambda_a > 1.0") == 4
    assert s[0][2].guidance == "none"  # lambda = 1 for both sources is no guidance (Sec. 3.2.1)
    for g, _, smp in s[1:]:
        assert smp.guidance == "multi"
        assert (smp.scale_instrument > 1) == g.startswith("lambda_i > 1.0")
        assert (smp.scale_audio > 1) == g.endswith("lambda_a > 1.0")


def test_causal_bias_and_naive_settings():
    s = evaluate.sweep_settings("causal-bias", Sampling(w_c=0.5), ws_values=(0.0, 0.1, 0.2, 0.5))
    assert [x.w_s for _, _, x in s] == [0.0, 0.1, 0.2, 0.5]
    assert all(x.w_c == 0.1 and x.w_r == 1.0 for _, _, x in s)
    (_, _, naive), (_, _, best) = evaluate.sweep_settings("best-vs-naive", Sampling(steps=(2, 2)))
    assert naive.guidance == "none" and naive.w_s == 0.0 and naive.steps == (2, 2)
    assert best.guidance == "multi" and best.w_s == 0.1


def test_group_rows_averages_each_group():
    rows = [{"group": "a", "fad": 1.0, "mirdd": 0.2}, {"group": "b", "fad": 5.0, "mirdd": 0.0},
            {"group": "a", "fad": 3.0, "mirdd": 0.4}]
    assert evaluate.group_rows(rows) == [{"group": "a", "n_settings": 2, "fad": 2.0, "mirdd": pytest.approx(0.3)},
                                         {"group": "b", "n_settings": 1, "fad": 5.0, "mirdd": 0.0}]


# -------------------------------------------------------------------------------- protocol, end to end

@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory):
    """A 3-track synthetic dataset, a small fitted spectral codec and a random-weight tiny StemGen checkpoint."""
    import model
    import spectral
    import synth
    root = tmp_path_factory.mktemp("eval")
    ds = str(root / "data")
    synth.make_dataset(ds, tracks=3, seconds=4.0, seed=0, progress=False, workers=1, sample_rate=16000)
    tok = spectral.fit_spectral(ds, None, n_q=2, bins=16, dim=16, sample_rate=16000, n_fft=512, seconds_per_track=4,
                             kmeans_iters=3, griffin_lim_iters=4, progress=False)
    cfg = replace(model.PRESETS["tiny"], n_q=2, bins=16, dim=32, n_heads=2, n_layers=1)
    torch.manual_seed(0)
    ckpt = str(root / "ckpt.pt")
    checkpoint.save_checkpoint(ckpt, {"model_config": asdict(cfg), "model": model.StemGen(cfg).state_dict(),
                                 "codec_spec": tok.spec(), "step": 0})
    return ds, ckpt, root


def _args(ds, ckpt, out, *extra):
    return ["--checkpoint", ckpt, "--data", ds, "--n", "2", "--seconds", "2", "--steps", "2", "2", "--out", str(out),
            "--no-progress", "--device", "cpu", *extra]


def test_protocol_runs_end_to_end_and_records_provenance(tiny_setup, capsys):
    ds, ckpt, root = tiny_setup
    out = root / "out"
    with pytest.warns(UserWarning, match="embeddings for a 128-dimensional"):
        assert evaluate.main(_args(ds, ckpt, out, "--sweep", "causal-bias", "--ws-values", "0,0.5")) == 0
    result = json.loads((out / "sweep-causal-bias.json").read_text())
    assert [r["label"] for r in result["rows"]] == ["w_s=0", "w_s=0.5"]
    for r in result["rows"]:
        assert np.isfinite(r["fad"]) and r["fad"] >= 0 and r["mirdd"] >= 0
        assert set(r["mirdd_per_descriptor"]) == set(evaluate.mir.DESCRIPTORS)
    assert result["embedding"]["name"] == "logmel-stats" and result["embedding"]["sample_rate"] == 16000
    assert result["embedding"]["comparable_with_published_fad"] is False
    assert {"torch", "numpy", "scipy", "librosa"} <= set(result["versions"])
    assert result["protocol"]["split"] == "test" and len(result["protocol"]["instruments"]) == 2
    md = (out / "sweep-causal-bias.md").read_text()
    assert "NOT comparable" in md and "| w_s = 0.5 |" in md and "logmel-stats at 16000 Hz" in md
    before = (out / "sweep-causal-bias.json").read_text()  # a second run never overwrites silently
    assert evaluate.main(_args(ds, ckpt, out, "--sweep", "causal-bias")) == evaluate.EXIT_USER_ERROR
    assert "--force" in capsys.readouterr().err
    assert (out / "sweep-causal-bias.json").read_text() == before


def test_generated_population_is_repeatable_for_a_seed(tiny_setup):
    ds, ckpt, _ = tiny_setup
    net, tok, _ = checkpoint.load_model(ckpt, "cpu")
    examples = evaluate.draw_examples(ds, "test", 1, 2.0, tok.sample_rate, seed=0)
    assert all(c.shape == t.shape == (2 * tok.sample_rate,) for c, t, _ in examples)
    sampling = Sampling(steps=(2, 2))
    a = evaluate.generate_population(net, tok, examples, sampling, seed=3)
    b = evaluate.generate_population(net, tok, examples, sampling, seed=3)
    c = evaluate.generate_population(net, tok, examples, sampling, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_user_errors_end_in_one_message(tiny_setup, capsys):
    ds, ckpt, root = tiny_setup
    assert evaluate.main(_args(ds, ckpt, root / "o1", "--embedding", "vggish")) == evaluate.EXIT_USER_ERROR
    assert "--vggish-weights" in capsys.readouterr().err
    assert evaluate.main(_args(str(root / "missing"), ckpt, root / "o2")) == evaluate.EXIT_USER_ERROR
    assert "missing" in capsys.readouterr().err
    assert not os.path.exists(root / "o1") and not os.path.exists(root / "o2")
