import json
import os
import re
import subprocess
import sys

import pytest
import torch

from audio import slakh
from spectral import fit as spectral_fit
from songs import synth
import train
from training import curves, ship
from training.recipes import RECIPES
from training.checkpoint import save_checkpoint, trained_classes
from conftest import FIXTURE, ROOT
from audio.instruments import INSTRUMENTS


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A few short synthetic songs at 16 kHz and a small spectral codec fitted on them."""
    root = tmp_path_factory.mktemp("train_data")
    data_dir = str(root / "songs")
    synth.make_dataset(data_dir, tracks=20, seconds=3.0, seed=1, workers=1, progress=False, sample_rate=16000)
    codec_file = str(root / "codec.pt")
    spectral_fit.fit_spectral(data_dir, codec_file, n_q=2, bins=16, dim=16, sample_rate=16000, n_fft=512,
                          seconds_per_track=4.0, kmeans_iters=5, griffin_lim_iters=4, progress=False)
    return data_dir, codec_file


def argv(data_dir, codec_file, out, *extra):
    return ["--data", data_dir, "--codec", "spectral", "--codec-file", codec_file, "--preset", "tiny",
            "--out", str(out), "--batch", "4", "--crop-seconds", "1", "--warmup", "2", "--hold", "2",
            "--decay", "4", "--lr", "1e-3", "--eval-every", "2", "--save-every", "2", "--val-pairs", "4",
            "--workers", "0", "--no-progress", *extra]


def test_tri_stage_schedule_warms_up_holds_and_decays_to_a_floor():
    lr = [train.tri_stage_lr(s, warmup=10, hold=5, decay=20, final_frac=0.01) for s in range(60)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert all(b > a for a, b in zip(lr[:10], lr[1:10]))            # linear warm-up
    assert all(x == 1.0 for x in lr[10:15])                           # hold at the peak
    assert all(b < a for a, b in zip(lr[15:35], lr[16:35]))           # exponential decay
    assert lr[15 + 20] == pytest.approx(0.01) and min(lr) > 0        # ends at the floor, never 0
    ratios = [lr[i + 1] / lr[i] for i in range(15, 34)]
    assert max(ratios) - min(ratios) < 1e-9                           # constant ratio: exponential


@pytest.mark.slow
@pytest.mark.parametrize("pool, extra", [("0", []), ("12", []), ("0", ["--crop-grid", "0.5", "--token-cache-gb", "0.01"]),
                                         ("12", ["--harmony-weight", "1"])],
                         ids=["on-the-fly", "token-pool", "on-the-fly-token-cache", "token-pool-harmony-term"])
def test_resume_continues_bit_for_bit(tiny_data, tmp_path, pool, extra, capsys):
    """A run stopped at step 3 and resumed to 6 ends with the same weights as a run of 6 steps (a resumed run's
    token cache starts empty: its targets are encoded afresh, and give the tokens the cache held)."""
    data_dir, codec_file = tiny_data
    assert train.main(argv(data_dir, codec_file, tmp_path / "full", "--max-steps", "6", "--pool-pairs", pool, *extra)) == 0
    reused = re.search(r"token cache: (\d+) of (\d+) target crops reused", capsys.readouterr().err)
    assert (reused is not None) == ("--token-cache-gb" in extra)  # said when the cache is on, and only then
    if reused:
        assert int(reused.group(2)) == 6 * 4 and 0 <= int(reused.group(1)) <= 6 * 4   # one lookup per target
    assert train.main(argv(data_dir, codec_file, tmp_path / "part", "--max-steps", "3", "--pool-pairs", pool, *extra)) == 0
    # the resumed run takes its data, codec and recipe from the checkpoint; only the new step limit is given
    assert train.main(["--out", str(tmp_path / "part"), "--resume", "--max-steps", "6", "--no-progress"]) == 0
    a = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "part" / "ckpt.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["scheduler"] == b["scheduler"]
    # every target trained on is counted once, in its class; resuming carries the counts on
    assert a["class_counts"] == b["class_counts"] and sum(a["class_counts"].values()) == 6 * 4
    in_data = {INSTRUMENTS[s.instrument] for t in slakh.scan_tracks(data_dir, "train")[0] for s in t.stems}
    assert {k for k, n in a["class_counts"].items() if n} <= in_data
    # the checkpoint holds what generate.py and a resumed run need
    for key in ("model_config", "codec_spec", "optimizer", "rng", "best_val_nll", "train_args"):
        assert key in a
    rows = [json.loads(line) for line in open(tmp_path / "full" / "metrics.jsonl")]
    val = [r for r in rows if r["kind"] == "val"]
    assert val and len(val[-1]["acc_per_level"]) == 2 and val[-1]["nll"] > 0 and val[-1]["nll_no_context"] > 0
    final = rows[-1]
    validation_tracks = slakh.scan_tracks(data_dir, "validation")[0]
    assert final["kind"] == "final" and final["songs"] == len(validation_tracks)   # every validation song scored
    assert set(final["conditions"]) == {"true_context", "context_dropped", "other_song", "shifted"}
    gains = final["gains"]                                  # the verdict follows listening.verdict's rule
    listens = gains["over_dropped"]["lo"] > 0 and gains["over_other_song"]["lo"] > 0
    assert final["verdict"].startswith("listens") == listens
    assert final["verdict"].startswith("does not listen yet") == (not listens)
    assert 0 <= final["other_song_fallbacks"] <= final["pairs"] == 4
    for key in ("with_context", "context_dropped", "both_dropped", "constant_baseline"):
        r = final["masked_accuracy"][key]
        assert 0 <= r["acc"] <= 1 and len(r["acc_per_level"]) == 2


@pytest.mark.slow
def test_init_from_adds_to_the_class_counts_and_an_older_checkpoint_keeps_them_unknown(tiny_data, tmp_path):
    data_dir, codec_file = tiny_data
    assert train.main(argv(data_dir, codec_file, tmp_path / "a", "--max-steps", "2")) == 0
    first = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=True)
    assert train.main(argv(data_dir, codec_file, tmp_path / "b", "--max-steps", "2",
                           "--init-from", str(tmp_path / "a" / "ckpt.pt"))) == 0
    tuned = torch.load(tmp_path / "b" / "ckpt.pt", weights_only=True)
    assert sum(tuned["class_counts"].values()) == sum(first["class_counts"].values()) + 2 * 4
    assert all(tuned["class_counts"][k] >= n for k, n in first["class_counts"].items())
    # the shipped provenance names both stages, first stage first, each with the flags it was given
    assert ship.main([str(tmp_path / "b.pt"), "--out", str(tmp_path / "b")]) == 0
    stages = torch.load(tmp_path / "b.pt", weights_only=True)["provenance"]["stages"]
    assert len(stages) == 2 and f"--out {tmp_path / 'a'}" in stages[0] and "--init-from" not in stages[0]
    assert stages[1].endswith(f"--init-from {tmp_path / 'a' / 'ckpt.pt'}")
    # a checkpoint from before the counts were kept: resuming it leaves them unknown (generate.py then warns)
    del first["class_counts"]
    save_checkpoint(str(tmp_path / "a" / "ckpt.pt"), first)
    assert train.main(["--out", str(tmp_path / "a"), "--resume", "--max-steps", "3", "--no-progress"]) == 0
    resumed = torch.load(tmp_path / "a" / "ckpt.pt", weights_only=True)
    assert resumed["step"] == 3 and resumed["class_counts"] is None
    assert trained_classes(resumed) is None


def test_help_shows_each_knob_with_the_paper_and_demo_values(capsys):
    """--help states every recipe knob's value in both recipes, from the one Recipe table."""
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--coarse-prob" in out and "(None | 0.7)" in out
    assert "(40 | 16)" in out and "(paper | tiny)" in out


def test_the_harmony_term_without_a_pool_is_refused_before_any_work(tmp_path, capsys):
    assert train.main(["--data", str(tmp_path), "--codec", "spectral", "--pool-pairs", "0", "--harmony-weight", "1",
                       "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "--harmony-weight needs a token pool" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_existing_run_is_not_overwritten_without_resume(tiny_data, tmp_path, capsys):
    data_dir, codec_file = tiny_data
    assert train.main(argv(data_dir, codec_file, tmp_path, "--max-steps", "1")) == 0
    before = os.path.getmtime(tmp_path / "ckpt.pt")
    assert train.main(argv(data_dir, codec_file, tmp_path, "--max-steps", "2")) == 2
    assert "--resume" in capsys.readouterr().err
    assert os.path.getmtime(tmp_path / "ckpt.pt") == before


@pytest.mark.slow
def test_dataset_without_usable_pairs_fails_at_start(tiny_data, tmp_path, capsys):
    _, codec_file = tiny_data
    fixture = os.path.join(FIXTURE, "slakh2100_flac_redux")
    assert train.main(argv(fixture, codec_file, tmp_path, "--max-steps", "1")) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error:") and "Traceback" not in err
    assert not os.path.exists(tmp_path / "ckpt.pt")


@pytest.mark.slow
def test_repeated_non_finite_losses_stop_the_run_with_a_clear_message(tiny_data, tmp_path, monkeypatch, capsys):
    data_dir, codec_file = tiny_data
    monkeypatch.setattr(train, "masked_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    assert train.main(argv(data_dir, codec_file, tmp_path, "--max-steps", "50")) == 2
    assert "non-finite" in capsys.readouterr().err
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ck["nonfinite_steps"] == train.MAX_NONFINITE_IN_A_ROW and ck["step"] < 50


@pytest.mark.slow
def test_two_processes_on_gloo_match_gradient_accumulation(tiny_data, tmp_path):
    """torchrun with 2 CPU processes (DDP, gloo) trains the same model as one process accumulating 2 micro-batches."""
    data_dir, codec_file = tiny_data
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    import socket
    with socket.socket() as s:                       # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "--master_addr=127.0.0.1",
           os.path.join(ROOT, "train.py"), *argv(data_dir, codec_file, tmp_path / "ddp", "--max-steps", "3",
                                                  "--micro-batch", "2", "--device", "cpu")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert train.main(argv(data_dir, codec_file, tmp_path / "one", "--max-steps", "3", "--micro-batch", "2")) == 0
    a = torch.load(tmp_path / "ddp" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "one" / "ckpt.pt", weights_only=True)
    assert a["step"] == b["step"] == 3
    assert a["class_counts"] == b["class_counts"]       # both processes' targets are counted
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-5), k


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tiny_data, tmp_path):
    import signal
    import time
    data_dir, codec_file = tiny_data
    cmd = [sys.executable, os.path.join(ROOT, "train.py"),
           *argv(data_dir, codec_file, tmp_path, "--max-steps", "100000", "--save-every", "100000")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and '"train"' in metrics.read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert 0 < ck["step"] < 100000


def test_plot_draws_the_curves_of_a_run(tmp_path):
    rows = [{"kind": "train", "step": s, "loss": 5 - s / 10, "lr": 1e-3, "tokens_per_s": 1.0} for s in range(1, 11)]
    rows += [{"kind": "val", "step": 10, "nll": 4.0, "nll_no_context": 4.2, "acc": 0.2, "acc_per_level": [0.2]}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert curves.main(["--out", str(tmp_path)]) == 0
    png = (tmp_path / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


@pytest.mark.slow
def test_a_recipes_checkpoints_carry_its_recommended_sampling_and_ship_keeps_it(tiny_data, tmp_path):
    """The music recipe's runs write RECIPES["music"].sampling into every checkpoint; training.ship keeps it, and
    --sampling none ships the paper's values."""
    from decode import check_sampling
    assert all(check_sampling(r.sampling) == r.sampling for r in RECIPES.values())
    music = RECIPES["music"].sampling
    data_dir, codec_file = tiny_data
    assert train.main(argv(data_dir, codec_file, tmp_path / "run", "--recipe", "music", "--max-steps", "2",
                           "--pool-pairs", "0", "--micro-batch", "4")) == 0
    for name in ("ckpt.pt", "best.pt"):
        assert torch.load(tmp_path / "run" / name, weights_only=True)["sampling"] == music
    assert ship.main([str(tmp_path / "a.pt"), "--out", str(tmp_path / "run")]) == 0
    assert torch.load(tmp_path / "a.pt", weights_only=True)["sampling"] == music
    assert ship.main([str(tmp_path / "b.pt"), "--out", str(tmp_path / "run"), "--sampling", "none"]) == 0
    assert "sampling" not in torch.load(tmp_path / "b.pt", weights_only=True)
    # a shipped file's sampling re-chosen later: only the recommendation changes, and the change is recorded
    assert ship.main([str(tmp_path / "c.pt"), "--from", str(tmp_path / "a.pt"), "--sampling", "scale_audio=5",
                      "temperature=0.5", "--reason", "the log's entry"]) == 0
    a, c = (torch.load(tmp_path / f, weights_only=True) for f in ("a.pt", "c.pt"))
    assert c["sampling"] == {"scale_audio": 5.0, "temperature": 0.5}
    assert all(torch.equal(a["model"][k], c["model"][k]) for k in a["model"])
    assert {k: v for k, v in c["provenance"].items() if k != "sampling_changes"} == a["provenance"]
    assert [(x["previous"], x["reason"]) for x in c["provenance"]["sampling_changes"]] == [(music, "the log's entry")]
    with pytest.raises(SystemExit):                                   # a change without its reason is refused
        ship.main([str(tmp_path / "d.pt"), "--from", str(tmp_path / "a.pt"), "--sampling", "scale_audio=5"])
    assert not (tmp_path / "d.pt").exists()


@pytest.mark.slow
def test_ship_writes_the_best_weights_small_with_their_provenance_and_generate_loads_them(tiny_data, tmp_path):
    from training.checkpoint import load_model
    data_dir, codec_file = tiny_data
    assert train.main(argv(data_dir, codec_file, tmp_path / "run", "--max-steps", "4")) == 0
    dst = tmp_path / "ship" / "model.pt"
    assert ship.main([str(dst), "--out", str(tmp_path / "run")]) == 0
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    small = torch.load(dst, weights_only=True)
    assert "optimizer" not in small and os.path.getsize(dst) < os.path.getsize(tmp_path / "run" / "best.pt")
    assert small["step"] == best["step"] and small["class_counts"] == best["class_counts"]
    prov = small["provenance"]
    assert prov["data"] == data_dir and f"--out {tmp_path / 'run'}" in prov["command"] and prov["train_seconds"] >= 0
    assert "--max-steps 4" in prov["command"] and f"--codec-file {codec_file}" in prov["command"]   # not the recipe's
    assert "--threads" not in prov["command"] and prov["stages"] == [prov["command"]]          # the recipe's value
    net, _, _ = load_model(str(dst))
    assert all(torch.equal(p.detach(), best["model"][k].to(torch.bfloat16).float())
               for k, p in net.state_dict().items())
    assert ship.main([str(dst), "--out", str(tmp_path / "nothing")]) == 2
    # --sampling: the recommended sampling travels in the shipped file; a bad one stops
    assert "sampling" not in small                                       # the paper recipe recommends nothing
    tuned = tmp_path / "ship" / "tuned.pt"
    assert ship.main([str(tuned), "--out", str(tmp_path / "run"), "--sampling", "fine_temperature=0"]) == 0
    assert torch.load(tuned, weights_only=True)["sampling"] == {"fine_temperature": 0.0}
    assert ship.main([str(tuned), "--out", str(tmp_path / "run"), "--sampling", "loudness=3"]) == 2



@pytest.mark.slow
def test_a_killed_runs_leftovers_are_tidied_when_it_resumes(tiny_data, tmp_path):
    """kill -9 leaves a save's temporary file and metrics rows of steps the resumed run takes again: the file is
    removed and the rows dropped, so that every step has one row."""
    data_dir, codec_file = tiny_data
    out = tmp_path / "run"
    assert train.main(argv(data_dir, codec_file, out, "--max-steps", "2")) == 0
    (out / ".tmp-0123456789abcdef.pt").write_bytes(b"half a checkpoint")
    with open(out / "metrics.jsonl", "a") as f:                   # steps the killed run logged past its save
        f.write(json.dumps({"kind": "train", "step": 3, "loss": 9.0, "lr": 0.1, "time": 0}) + "\n")
    assert train.main(["--out", str(out), "--resume", "--max-steps", "4", "--no-progress"]) == 0
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4] and all(r["loss"] != 9.0 for r in rows if r["kind"] == "train")
