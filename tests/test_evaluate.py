"""The sweeps and the Sec. 3.2 protocol end to end on a tiny model."""
import json
import os
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from plumbing import checkpoint
import evaluate
from plumbing.cli import USER_ERROR
from metrics import mir
from conftest import write_corpus
from decode import Sampling
from plumbing.instruments import INSTRUMENTS, UNPITCHED


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
    from plumbing import spectral
    from songs import synth
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
    assert evaluate.main(_args(ds, ckpt, out, "--sweep", "causal-bias")) == USER_ERROR
    assert "--force" in capsys.readouterr().err
    assert (out / "sweep-causal-bias.json").read_text() == before


@pytest.mark.slow
def test_one_seeding_rule_the_batch_starting_at_example_j_is_seeded_with_seed_and_j(tiny_setup):
    """evaluate.py's own rule for which generator a batch gets: decoded alone (batch 1) or as the lone last batch
    of a batched call, example 2 gets the same stem; the examples in a shared batch get other draws, and another
    --seed other stems (that one generator's seed fixes the tokens is decode.py's, tested in test_decode)."""
    ds, ckpt, _ = tiny_setup
    net, tok, _ = checkpoint.load_model(ckpt, "cpu")
    examples = evaluate.draw_examples(ds, "test", 3, 2.0, tok.sample_rate, seed=0)
    assert all(c.shape == t.shape == (2 * tok.sample_rate,) for c, t, _ in examples)
    contexts, instruments = [c for c, _, _ in examples], [k for _, _, k in examples]
    sampling = Sampling(steps=(2, 2))
    alone = evaluate.generate_stems(net, tok, contexts, instruments, sampling, seed=3, batch=1)
    paired = evaluate.generate_stems(net, tok, contexts, instruments, sampling, seed=3, batch=2)
    other = evaluate.generate_stems(net, tok, contexts, instruments, sampling, seed=4, batch=1)
    assert np.array_equal(alone[2], paired[2]) and not np.array_equal(alone[1], paired[1])
    assert not any(np.array_equal(x, y) for x, y in zip(alone, other))


@pytest.mark.slow
def test_user_errors_end_in_one_message(tiny_setup, capsys):
    ds, ckpt, root = tiny_setup
    assert evaluate.main(_args(ds, ckpt, root / "o1", "--embedding", "vggish")) == USER_ERROR
    assert "--vggish-weights" in capsys.readouterr().err
    assert evaluate.main(_args(str(root / "missing"), ckpt, root / "o2")) == USER_ERROR
    assert "missing" in capsys.readouterr().err
    assert not os.path.exists(root / "o1") and not os.path.exists(root / "o2")


# ------------------------------------------------------------------------------------------- listening

def test_pitched_examples_take_one_pitched_stem_per_song(tiny_setup):
    ds, _, _ = tiny_setup
    seconds, sr = 2.0, 16000
    examples = evaluate.pitched_examples(ds, "all", 10, seconds, sr, seed=0)
    songs = [song for _, _, _, song, _ in examples]
    assert 2 <= len(examples) <= 3 and len(set(songs)) == len(songs)          # 3 songs in all: at most one each
    for context, real, k, _, classes in examples:
        assert k not in UNPITCHED and context.shape == real.shape == (int(seconds * sr),)
        assert all(0 <= c < len(INSTRUMENTS) for c in classes) and classes
    assert len(evaluate.pitched_examples(ds, "all", 2, 2.0, 16000, seed=0)) == 2
    with pytest.raises(evaluate.EvaluateError, match="fewer than two songs"):
        evaluate.pitched_examples(ds, "test", 10, 2.0, 16000, seed=0)           # the test split holds one song


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*embeddings for a 128-dimensional")   # 3 stems: FAD is only checked to run
def test_listening_run_reports_every_measure_and_draws_the_examples(tiny_setup, tmp_path):
    """evaluate.py --listening end to end on a random tiny model: the NLL table, the chroma rows (real stems
    decoded from their tokens too), notes or noise, the transposition test and the picture, in JSON and Markdown."""
    ds, ckpt, _ = tiny_setup
    corpus = write_corpus(str(tmp_path / "corpus"), pieces=1)
    out = tmp_path / "out"
    assert evaluate.main(_args(ds, ckpt, out, "--listening", "--split", "all", "--audio-n", "3", "--transposition",
                               corpus, "--plot", "--plot-n", "2")) == 0
    r = json.loads((out / "listening.json").read_text())["listening"]
    assert r["pairs"] == 256 and r["songs"] == 3 and 0 <= r["other_song_fallbacks"] <= 256
    chroma = r["chroma"]
    assert set(evaluate.CHROMA_ROWS) <= set(chroma) and 2 <= chroma["n"] <= 3
    for who in evaluate.CHROMA_ROWS:
        for m in ("frame", "key"):
            assert chroma[who][m]["lo"] <= chroma[who][m]["gain"] <= chroma[who][m]["hi"]
    shares = r["notes"]["harmonic_share"]
    assert list(shares) == ["generated", "real stems", "real stems, codec round trip",
                            "real stems, round trip with random finer levels"]
    assert all(0 <= h["lo"] <= h["mean"] <= h["hi"] <= 1 for h in shares.values())
    assert shares["real stems"]["mean"] > 0.3                          # rendered pitched stems are mostly notes
    assert set(r["notes"]["fad_against_real"]) == set(shares) - {"real stems"}
    assert all(np.isfinite(d) and d >= 0 for d in r["notes"]["fad_against_real"].values())
    bass = r["transposition"]["bass"]
    assert bass["n"] == 12 and bass["pieces"] == 1 and bass["instrument"] == "Bass"
    assert bass["real"]["mean"] > 0.3 and 0 <= bass["generated"]["right_shift_best"] <= 12
    md = (out / "listening.md").read_text()
    for text in ("| real stems, codec round trip | key |", "| real stems, round trip with random finer levels |",
                 "Transposition test, Bass: 12 contexts from 1 piece ", "| real part (ceiling) |", "listening.png"):
        assert text in md, text
    png = (out / "listening.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # a second run refuses to overwrite the picture too
    os.remove(out / "listening.json")
    os.remove(out / "listening.md")
    assert evaluate.main(_args(ds, ckpt, out, "--listening", "--split", "all", "--plot")) == USER_ERROR


def test_listening_flags_are_checked_before_any_work(tiny_setup, tmp_path, capsys):
    ds, ckpt, _ = tiny_setup
    assert evaluate.main(_args(ds, ckpt, tmp_path / "a", "--listening", "--transposition",
                               str(tmp_path / "nowhere"))) == USER_ERROR
    assert "--transposition" in capsys.readouterr().err
    assert evaluate.main(_args(ds, ckpt, tmp_path / "b", "--listening", "--transposition", str(tmp_path),
                               "--transposition-classes", "kazoo")) == USER_ERROR
    assert "unknown instrument 'kazoo'" in capsys.readouterr().err
