"""The sweeps and the Sec. 3.2 protocol end to end on a tiny model."""
import json
import os
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

import checkpoint
import evaluate
import mir
from decode import Sampling


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


@pytest.mark.slow
def test_protocol_runs_end_to_end_and_records_provenance(tiny_setup, capsys):
    ds, ckpt, root = tiny_setup
    out = root / "out"
    with pytest.warns(UserWarning, match="embeddings for a 128-dimensional"):
        assert evaluate.main(_args(ds, ckpt, out, "--sweep", "causal-bias", "--ws-values", "0,0.5")) == 0
    result = json.loads((out / "sweep-causal-bias.json").read_text())
    assert [r["label"] for r in result["rows"]] == ["w_s=0", "w_s=0.5"]
    for r in result["rows"]:
        assert np.isfinite(r["fad"]) and r["fad"] >= 0 and r["mirdd"] >= 0
        assert set(r["mirdd_per_descriptor"]) == set(mir.DESCRIPTORS)
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_user_errors_end_in_one_message(tiny_setup, capsys):
    ds, ckpt, root = tiny_setup
    assert evaluate.main(_args(ds, ckpt, root / "o1", "--embedding", "vggish")) == evaluate.EXIT_USER_ERROR
    assert "--vggish-weights" in capsys.readouterr().err
    assert evaluate.main(_args(str(root / "missing"), ckpt, root / "o2")) == evaluate.EXIT_USER_ERROR
    assert "missing" in capsys.readouterr().err
    assert not os.path.exists(root / "o1") and not os.path.exists(root / "o2")
