"""The sweeps and the Sec. 3.2 protocol end to end on a tiny model."""
import json
import os
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from training import checkpoint
import evaluate
from cli.common import USER_ERROR
from metrics import mir, sweep
from conftest import write_corpus
from decode import Sampling
from audio.instruments import INSTRUMENTS, UNPITCHED


# ------------------------------------------------------------------------------------------- sweeps

def test_guidance_sweep_follows_table_1_groups():
    s = sweep.sweep_settings("guidance", Sampling(), scales=(2.0, 4.0))
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
    s = sweep.sweep_settings("causal-bias", Sampling(w_c=0.5), ws_values=(0.0, 0.1, 0.2, 0.5))
    assert [x.w_s for _, _, x in s] == [0.0, 0.1, 0.2, 0.5]
    assert all(x.w_c == 0.1 and x.w_r == 1.0 for _, _, x in s)
    (_, _, naive), (_, _, best) = sweep.sweep_settings("best-vs-naive", Sampling(steps=(2, 2)))
    assert naive.guidance == "none" and naive.w_s == 0.0 and naive.steps == (2, 2)
    assert best.guidance == "multi" and best.w_s == 0.1


def test_group_rows_averages_each_group():
    rows = [{"group": "a", "fad": 1.0, "mirdd": 0.2}, {"group": "b", "fad": 5.0, "mirdd": 0.0},
            {"group": "a", "fad": 3.0, "mirdd": 0.4}]
    assert sweep.group_rows(rows) == [{"group": "a", "n_settings": 2, "fad": 2.0, "mirdd": pytest.approx(0.3)},
                                         {"group": "b", "n_settings": 1, "fad": 5.0, "mirdd": 0.0}]


# -------------------------------------------------------------------------------- protocol, end to end

@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory):
    """A 3-track synthetic dataset, a small fitted spectral codec and a random-weight tiny StemGen checkpoint."""
    import model
    from spectral import fit as spectral_fit
    from songs import synth
    root = tmp_path_factory.mktemp("eval")
    ds = str(root / "data")
    synth.make_dataset(ds, tracks=3, seconds=4.0, seed=0, progress=False, workers=1, sample_rate=16000)
    tok = spectral_fit.fit_spectral(ds, None, n_q=2, bins=16, dim=16, sample_rate=16000, n_fft=512, seconds_per_track=4,
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
    examples = sweep.draw_examples(ds, "test", 3, 2.0, tok.sample_rate, seed=0)
    assert all(c.shape == t.shape == (2 * tok.sample_rate,) for c, t, _ in examples)
    contexts, instruments = [c for c, _, _ in examples], [k for _, _, k in examples]
    sampling = Sampling(steps=(2, 2))
    alone = sweep.generate_stems(net, tok, contexts, instruments, sampling, seed=3, batch=1)
    paired = sweep.generate_stems(net, tok, contexts, instruments, sampling, seed=3, batch=2)
    other = sweep.generate_stems(net, tok, contexts, instruments, sampling, seed=4, batch=1)
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
    with pytest.raises(sweep.EvaluateError, match="fewer than two songs"):
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
                               corpus, "--plot", "--plot-n", "2", "--guidance", "joint", "--scale-audio", "6")) == 0
    written = json.loads((out / "listening.json").read_text())
    assert written["protocol"]["chroma_gate_db"] == -60.0            # the default gate, on record
    r = written["listening"]
    assert r["pairs"] == 256 and r["songs"] == 3 and 0 <= r["other_song_fallbacks"] <= 256
    chroma = r["chroma"]
    assert set(evaluate.CHROMA_ROWS) <= set(chroma) and 2 <= chroma["n"] <= 3
    assert chroma["sampling"]["guidance"] == "joint" and chroma["sampling"]["scale_audio"] == 6.0   # as asked
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
    assert bass["real"]["consistency"]["mean"] > 0.6 and bass["generated"]["consistency"]["chunks"] == 1
    assert bass["tokens"]["n"] == 12 and bass["tokens"]["chunks"] == 1 and 0 <= bass["tokens"]["own_best"] <= 12
    md = (out / "listening.md").read_text()
    for text in ("| real stems, codec round trip | key |", "| real stems, round trip with random finer levels |",
                 "Transposition test, Bass: 12 contexts from 1 piece ", "| real part (ceiling) |", "(1 chunk) |",
                 "In tokens (no sampling): the real part's level-0 NLL is", "listening.png"):
        assert text in md, text
    assert "transposition-bass.png" in md and bass["plot"].endswith("transposition-bass.png")
    for picture in ("listening.png", "transposition-bass.png"):
        png = (out / picture).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # a second run refuses to overwrite either picture
    os.remove(out / "listening.json")
    os.remove(out / "listening.md")
    assert evaluate.main(_args(ds, ckpt, out, "--listening", "--split", "all", "--plot")) == USER_ERROR
    os.remove(out / "listening.png")
    assert evaluate.main(_args(ds, ckpt, out, "--listening", "--split", "all", "--plot", "--transposition",
                               corpus)) == USER_ERROR


def test_listening_flags_are_checked_before_any_work(tiny_setup, tmp_path, capsys):
    ds, ckpt, _ = tiny_setup
    assert evaluate.main(_args(ds, ckpt, tmp_path / "a", "--listening", "--transposition",
                               str(tmp_path / "nowhere"))) == USER_ERROR
    assert "--transposition" in capsys.readouterr().err
    assert evaluate.main(_args(ds, ckpt, tmp_path / "b", "--listening", "--transposition", str(tmp_path),
                               "--transposition-classes", "kazoo")) == USER_ERROR
    assert "unknown instrument 'kazoo'" in capsys.readouterr().err


# ------------------------------------------------------------------- sweep rows: intervals, alignment, resume

def test_song_draws_give_song_bootstraps_interval_and_every_example_its_songs_weight():
    from metrics import listening, sweep
    rng = np.random.default_rng(0)
    songs = ["b", "a", "c", "a", "b", "b", "d"]
    values = rng.standard_normal(len(songs))
    index, draws = listening.song_draws(songs, n_boot=300, seed=4)
    assert draws.shape == (300, 4) and np.all(draws.sum(1) == 4)        # each resample takes 4 songs
    _, lo, hi = listening.song_bootstrap(values, np.array(songs), n_boot=300, seed=4)
    assert sweep.interval(listening.mean_draws(values, index, draws)) == pytest.approx([lo, hi])
    once = listening.mean_draws(values, index, np.ones((1, 4)))            # every song once: the plain mean
    assert once[0] == pytest.approx(values.mean())


def test_compare_says_overlapping_intervals_cannot_be_told_apart():

    a = {"fad": 1.0, "mirdd": 0.2, "intervals": {"fad": [0.5, 1.5], "mirdd": [0.1, 0.3]}}
    b = {"fad": 1.4, "mirdd": 0.9, "intervals": {"fad": [1.2, 1.8], "mirdd": [0.6, 1.2]}}
    c = {"fad": 0.1, "mirdd": None, "intervals": {"fad": [0.0, 0.2], "mirdd": None}}
    assert sweep.compare(a, b, "fad") == sweep.TIE == sweep.compare(b, a, "fad")
    assert sweep.compare(a, b, "mirdd") == "higher" and sweep.compare(b, a, "mirdd") == "lower"
    assert sweep.compare(a, c, "fad") == "lower" and sweep.compare(a, c, "mirdd") is None
    assert sweep.compare(a, {"fad": 1.0}, "fad") is None                # no intervals at all
    touching = {"fad": 2.0, "intervals": {"fad": [1.5, 2.5]}}          # sharing an end point is overlapping
    assert sweep.compare(a, touching, "fad") == sweep.TIE
    line = sweep.verdict(a, b)
    assert "MIRDD higher" in line and f"FAD: {sweep.TIE}" in line
    assert "MIRDD: no interval" in sweep.verdict(a, c)


def test_group_intervals_are_the_percentiles_of_the_rows_mean_over_the_same_resamples():

    rng = np.random.default_rng(1)
    rows = [{"group": g, "fad": float(d.mean()), "draws": {"fad": d.tolist()},
             "intervals": {"fad": sweep.interval(d)}}
            for g, d in [("a", rng.normal(1, 0.1, 200)), ("b", rng.normal(3, 0.5, 200)), ("b", rng.normal(5, 0.5, 200))]]
    a, b = sweep.group_rows(rows)
    assert a["intervals"]["fad"] == rows[0]["intervals"]["fad"]        # a group of one row: the row's interval
    both = (np.array(rows[1]["draws"]["fad"]) + np.array(rows[2]["draws"]["fad"])) / 2
    assert b["intervals"]["fad"] == pytest.approx(sweep.interval(both)) and b["fad"] == pytest.approx(4.0, abs=0.1)
    assert b["intervals"]["mirdd"] is None and "mirdd" not in b                # no MIRDD in the rows


def test_key_alignment_is_positive_for_a_stem_with_its_contexts_notes_and_about_zero_for_noise():
    from conftest import chord
    from metrics import listening, sweep
    sr, rng = 16000, np.random.default_rng(0)
    roots = [48, 50, 52, 54, 56, 58] * 2                              # six songs in six keys, two examples each
    songs = [f"song{i % 6}" for i in range(12)]
    contexts = [chord([r, r + 4, r + 7], 3.0, sr, rng) + chord([r - 12], 3.0, sr, rng) for r in roots]
    copies = [chord([r + 12, r + 16, r + 19], 3.0, sr, rng) for r in roots]   # the context's triad an octave up
    noise = [0.05 * rng.standard_normal(3 * sr).astype(np.float32) for _ in roots]
    aligned = sweep.key_alignment(copies, contexts, songs, sr)
    assert aligned.min() > 0.5 and aligned.mean() > 1.0
    unaligned = sweep.key_alignment(noise, contexts, songs, sr)
    mean, lo, hi = listening.song_bootstrap(unaligned, np.array(songs))
    assert abs(mean) < 0.15 and lo < 0 < hi


def _count_generations(monkeypatch, stop_at=None):
    """Wrap evaluate's generation: record each setting's label; raise KeyboardInterrupt at label `stop_at`."""

    calls, real = [], sweep.generate_stems

    def counted(*a, desc="generate", **k):
        calls.append(desc.removeprefix("generate "))
        if calls[-1] == stop_at:
            raise KeyboardInterrupt
        return real(*a, desc=desc, **k)
    monkeypatch.setattr(evaluate, "generate_stems", counted)
    return calls


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*embeddings for a 128-dimensional")   # 3 stems: FAD is only checked to run
def test_a_stopped_sweep_resumes_without_generating_its_finished_settings(tiny_setup, tmp_path, monkeypatch, capsys):
    ds, ckpt, _ = tiny_setup
    out = tmp_path / "out"
    flags = _args(ds, ckpt, out, "--split", "all", "--n", "3", "--sweep", "causal-bias", "--ws-values", "0,0.5",
                  "--n-boot", "40")
    partial = out / "sweep-causal-bias.partial.json"
    calls = _count_generations(monkeypatch, stop_at="w_s=0.5")
    assert evaluate.main(flags) == 130                                 # stopped while generating the 2nd setting
    assert "--resume" in capsys.readouterr().err
    saved = json.loads(partial.read_text())
    assert [r["label"] for r in saved["rows"]] == ["w_s=0"] and not (out / "sweep-causal-bias.json").exists()
    assert evaluate.main(flags) == USER_ERROR                          # neither --resume nor --force: refused
    assert "--resume" in capsys.readouterr().err
    calls = _count_generations(monkeypatch)
    assert evaluate.main(flags + ["--resume"]) == 0
    assert calls == ["w_s=0.5"]                                        # the finished setting is not generated again
    result = json.loads((out / "sweep-causal-bias.json").read_text())
    assert [r["label"] for r in result["rows"]] == ["w_s=0", "w_s=0.5"] and not partial.exists()
    first = {k: v for k, v in saved["rows"][0].items() if k != "draws"}
    assert result["rows"][0] == first                                  # kept as scored, not recomputed
    assert len(set(result["protocol"]["songs"])) >= 2 and result["intervals"]["computed"]
    for r in result["rows"] + result["table"]:
        for m in ("fad", "mirdd", "harmonic_share", "alignment"):
            lo, hi = r["intervals"][m]
            assert lo <= hi and np.isfinite(r[m]), (m, r)
        assert 0 <= r["harmonic_share"] <= 1 and "draws" not in r
    md = (out / "sweep-causal-bias.md").read_text()
    assert "against w_s = 0 |" in md and "(baseline)" in md and "resamples of the" in md


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*embeddings for a 128-dimensional")
def test_resume_refuses_a_partial_file_of_another_protocol(tiny_setup, tmp_path, monkeypatch, capsys):
    ds, ckpt, _ = tiny_setup
    out = tmp_path / "out"
    flags = _args(ds, ckpt, out, "--split", "all", "--sweep", "best-vs-naive", "--n-boot", "20")
    _count_generations(monkeypatch, stop_at="best")
    assert evaluate.main(flags) == 130
    partial = out / "sweep-best-vs-naive.partial.json"
    before = partial.read_text()
    capsys.readouterr()
    assert evaluate.main(flags + ["--resume", "--kl-smoothing", "0.5"]) == USER_ERROR
    err = capsys.readouterr().err
    assert "kl_smoothing: 1.0 there, 0.5 now" in err and "--force" in err
    assert evaluate.main(flags + ["--resume", "--seed", "1"]) == USER_ERROR
    assert "seed: 0 there, 1 now" in capsys.readouterr().err
    assert evaluate.main(flags + ["--resume", "--force"]) == USER_ERROR   # keep or start over: one of the two
    assert "--force" in capsys.readouterr().err
    assert partial.read_text() == before                               # a refused run leaves the file alone


def test_protocol_examples_carry_the_song_they_were_cut_from(tiny_setup):
    import data

    ds, _, _ = tiny_setup
    examples, songs = sweep.draw_examples_and_songs(ds, "all", 6, 2.0, 16000, seed=0)
    plain = data.StemPairDataset(ds, "all", data.PairDraw(16000, 2.0), seed=0, length=6, verbose=False)
    for (c, t, k), (pc, pt, pk) in zip(examples, (plain[i] for i in range(6))):   # the same draws as before
        assert np.array_equal(c, pc.numpy()) and np.array_equal(t, pt.numpy()) and k == pk
    tracks = {os.path.relpath(t.path, ds) for t in plain.tracks}
    assert len(songs) == 6 and set(songs) <= tracks and len(set(songs)) >= 2
    for (_, _, k), song in zip(examples, songs):                    # the target's class is one its song has
        track = next(x for x in plain.tracks if os.path.relpath(x.path, ds) == song)
        assert k in {s.instrument for s in track.stems}


def test_protocol_examples_from_one_work_in_several_keys_share_one_song(tmp_path):
    """The sweeps' song labels group works as data.segment_song does: every key of a corpus piece is one song."""
    from conftest import write_corpus

    root = write_corpus(str(tmp_path / "corpus"), pieces=2, transpositions=(0, 4, 9), seconds=2.0, sr=8000)
    _, songs = sweep.draw_examples_and_songs(root, "all", 12, 1.0, 8000, seed=0)
    assert set(songs) <= {"corpus:p0", "corpus:p1"} and len(set(songs)) == 2


def test_chroma_gate_flag_takes_a_level_and_leaves_the_default_as_it_was(capsys):
    from metrics import listening
    parse = evaluate.build_parser().parse_args
    assert parse(["--data", "d", "--out", "o", "--listening"]).chroma_gate == listening.CHROMA_GATE_DB == -60.0
    assert parse(["--data", "d", "--out", "o", "--listening", "--chroma-gate", "-40"]).chroma_gate == -40.0
    for bad in ("6", "loud", "off", "-inf"):
        with pytest.raises(SystemExit):
            parse(["--data", "d", "--out", "o", "--listening", "--chroma-gate", bad])
        assert "--chroma-gate" in capsys.readouterr().err
