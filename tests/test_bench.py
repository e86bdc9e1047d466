import json
import os

import pytest

import bench


@pytest.mark.slow
def test_generate_bench_prints_real_time_factor_and_its_split(capsys):
    res = bench.main(["generate", "--preset", "tiny", "--seconds", "0.5", "--steps", "2", "2", "2", "2",
                      "--codec", "spectral", "--json", "--device", "cpu", "--context-seconds", "2",
                      "--measured-windows", "2", "--rounds", "1"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == res
    for key in ("device", "device_name", "dtype", "steps", "guidance", "forward_passes", "decode_tokens_s",
                "forward_s", "codec_decode_s", "total_s", "real_time_factor"):
        assert key in res
    assert res["branches"] == 3 and res["forward_passes"] <= 8
    assert res["real_time_factor"] > 0 and res["total_s"] >= res["codec_decode_s"]
    # before/after step scaling: [steps as given per window, steps scaled to the frames each window decodes]
    assert res["window_frames"] == 25 and res["context_windows"] == 7 and res["context_measured_windows"] == 2
    assert res["window_passes"] == [8, 4] and res["context_passes"][0] == 7 * 8 > res["context_passes"][1]
    assert "cores" in res["device_name"] and res["context_speedup"] > 0


@pytest.mark.slow
def test_train_bench_prints_throughput_mfu_and_tokenize_share(capsys):
    res = bench.main(["train", "--preset", "tiny", "--steps", "1", "--warmup", "1", "--batch", "2",
                      "--crop-seconds", "0.5", "--codec", "spectral", "--device", "cpu"])
    out = capsys.readouterr().out
    for key in ("tokens_per_s", "steps_per_s", "mfu", "peak_tflops", "tokenize_fraction", "device"):
        assert key in out and key in res
    assert res["tokens_per_s"] > 0 and 0 < res["tokenize_fraction"] < 1
    assert res["tokenize_s"] == pytest.approx(res["tokenize_context_s"] + res["tokenize_target_s"], abs=2e-4)
    assert res["tokenize_fraction_context"] + res["tokenize_fraction_target"] == pytest.approx(res["tokenize_fraction"], abs=2e-3)
    assert res["tokenize_fraction_all_targets_cached"] < res["tokenize_fraction"]
    assert "CUDA" in res["bf16_encode"]                 # on a CPU the bf16 figures are said to be missing


def test_data_bench_times_both_paths_on_the_same_workers(tmp_path, capsys):
    from test_activity import tone, write_track
    root = str(tmp_path / "ds")
    write_track(root, {f"S{k:02d}": (c, tone(3, 110 * (k + 1))) for k, c in enumerate(["Piano", "Bass", "Guitar", "Brass"])})
    res = bench.main(["data", "--data", root, "--items", "8", "--rounds", "2", "--workers", "0", "--batch", "4",
                      "--crop-seconds", "1", "--sample-rate", "8000", "--cache-dir", str(tmp_path / "cache"), "--json"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == res
    assert res["tracks"] == 1 and res["stems_per_track"] == 4 and res["workers"] == 0
    assert len(res["items_per_s_every_stem"]) == len(res["items_per_s_activity"]) == 2
    assert min(res["items_per_s_every_stem"] + res["items_per_s_activity"]) > 0 and res["speedup"] > 0
    assert os.listdir(tmp_path / "cache")
