import json

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
