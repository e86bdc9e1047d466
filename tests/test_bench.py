"""bench.py: what each benchmark reports (its fields, units and their consistency), never how fast this machine is."""
import argparse
import json
import math

import pytest
import torch

import bench
from cli.common import USER_ERROR
from conftest import tone, write_track
from guidance import BRANCHES
from codec import save_spectral
from spectral.dsp import FIT_HINT


def run(capsys, argv) -> dict:
    """bench.main with --json: the one JSON line it prints (and exit status 0)."""
    assert bench.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.slow
def test_generate_bench_reports_real_time_factor_and_its_split(capsys):
    res = run(capsys, ["generate", "--preset", "tiny", "--seconds", "0.5", "--steps", "2", "2", "2", "2",
                       "--codec", "spectral", "--device", "cpu", "--context-seconds", "2",
                       "--measured-windows", "2", "--rounds", "1"])
    assert res["device"] == "cpu" and "cores" in res["device_name"] and res["guidance"] == "multi"
    assert res["frames"] == math.ceil(0.5 * bench.FRAME_RATE) and res["branches"] == len(BRANCHES["multi"])
    assert res["forward_passes"] == bench.forward_passes(res["frames"], tuple(res["steps_run"]))
    assert res["total_s"] == pytest.approx(res["decode_tokens_s"] + res["codec_decode_s"], abs=2e-3)
    assert res["real_time_factor"] == pytest.approx(res["total_s"] / res["seconds"], abs=2e-3)
    assert 0 <= res["outside_forward_fraction"] <= 1
    # the long context: steps scaled to the frames each window decodes (25 frames: 1 step per level; the first
    # window decodes all 25, the six after it the 12 or 13 past their overlap, also 1 step per level)
    assert res["window_frames"] == 25 and res["context_windows"] == 7 and res["context_measured_windows"] == 2
    assert res["window_passes"] == 4 and res["context_passes"] == 7 * 4
    for name in ("window", "context"):
        assert res[f"{name}_s_per_audio_s"] > 0


@pytest.mark.slow
def test_train_bench_reports_throughput_mfu_and_tokenize_share(capsys):
    res = run(capsys, ["train", "--preset", "tiny", "--steps", "1", "--warmup", "1", "--batch", "2",
                       "--crop-seconds", "0.5", "--codec", "spectral", "--device", "cpu"])
    assert res["device"] == "cpu" and res["dtype"] == "torch.float32" and "measured" in res["peak_source"]
    assert res["frames"] == math.ceil(0.5 * bench.FRAME_RATE) and res["batch"] == 2 and res["compile"] is False
    n_q = bench.PRESETS["tiny"].n_q
    assert res["tokens_per_s"] == pytest.approx(res["batch"] * res["frames"] * n_q * res["steps_per_s"], rel=1e-3, abs=1)
    assert res["tokenize_s"] == pytest.approx(res["tokenize_context_s"] + res["tokenize_target_s"], abs=2e-4)
    assert res["tokenize_fraction_context"] + res["tokenize_fraction_target"] == pytest.approx(
        res["tokenize_fraction"], abs=2e-3)
    for key in ("tokenize_fraction", "tokenize_fraction_all_targets_cached", "mfu"):
        assert 0 <= res[key] <= 1, key
    assert res["peak_mem_GB"] is None and "CUDA" in res["bf16_encode"]   # a CPU has no such figures: said so


def test_data_bench_reports_each_round_and_builds_the_map_where_asked(tmp_path, capsys):
    root = str(tmp_path / "ds")
    write_track(root, {f"S{k:02d}": (c, tone(3, 110 * (k + 1))) for k, c in enumerate(["Piano", "Bass", "Guitar", "Brass"])})
    res = run(capsys, ["data", "--data", root, "--items", "8", "--rounds", "2", "--workers", "0", "--batch", "4",
                       "--crop-seconds", "1", "--sample-rate", "8000", "--cache-dir", str(tmp_path / "cache")])
    assert res["tracks"] == 1 and res["stems_per_track"] == 4 and res["workers"] == 0 and res["rounds"] == 2
    assert len(res["items_per_s"]) == 2 and all(math.isfinite(x) and x > 0 for x in res["items_per_s"])
    assert res["scan_and_map_build_s"] >= 0 and res["scan_and_cached_map_s"] >= 0
    assert list((tmp_path / "cache").iterdir())                          # the map was built where asked


def test_codec_bench_reports_each_held_out_file_and_the_means(tmp_path, capsys):
    root = str(tmp_path / "ds")
    write_track(root, {"S00": ("Piano", tone(1.0, 220))}, split="train")
    write_track(root, {"S00": ("Piano", tone(1.0, 330)), "S01": ("Bass", tone(1.0, 110))}, split="test")
    codec, _ = bench.make_codec(argparse.Namespace(codec="spectral"), torch.device("cpu"))
    path = str(tmp_path / "codec.pt")
    save_spectral(codec, path)
    argv = ["codec", "--codec", path, "--data", root, "--seconds", "0.5", "--device", "cpu"]
    res = run(capsys, argv)
    assert (res["codec"], res["files"], res["seconds"]) == ("spectral", 2, 0.5)
    assert sorted(r["file"] for r in res["rows"]) == [f"test/Track00001/stems/S0{k}.wav" for k in (0, 1)]
    for key in ("spectral_convergence", "chroma_cosine", "chroma_correlation"):
        assert res[f"mean_{key}"] == pytest.approx(sum(r[key] for r in res["rows"]) / 2)
    assert all(r["seconds"] == 0.5 for r in res["rows"])
    assert bench.main(argv) == 0 and "mean of 2 files" in capsys.readouterr().out
    assert bench.main(["codec", "--codec", str(tmp_path / "none.pt"), "--data", root]) == USER_ERROR
    assert FIT_HINT in capsys.readouterr().err
