"""codec.py and checkpoint.py's codec factories: the interface through the paper's Encodec, clear errors, specs."""
import math
import time

import pytest
import torch

import codec as C
from spectral import dsp
from conftest import tiny_encodec
import codec as codec_lib


def test_encodec_interface_shapes_frame_rate_and_lengths():
    codec = tiny_encodec()
    arch = C.ENCODEC_32KHZ_CONFIG
    assert (codec.sample_rate, codec.hop) == (arch["sampling_rate"], math.prod(arch["upsampling_ratios"]))
    assert codec.frame_rate == 50                      # the paper's Encodec: 50 token frames a second at 32 kHz
    assert (codec.n_q, codec.bins) == (4, 64)          # tiny_encodec's 1.2 kbps: 4 levels of 64 entries
    S = codec.hop * 7 + 100  # not whole frames: padded inside to 8 frames
    wav = 0.1 * torch.randn(2, 1, S, generator=torch.Generator().manual_seed(1))
    tokens = codec.encode(wav)
    assert tokens.dtype == torch.long and tokens.shape == (2, 4, 8)
    assert int(tokens.min()) >= 0 and int(tokens.max()) < codec.bins
    assert len(torch.unique(tokens)) > 1
    audio = codec.decode(tokens)
    assert audio.shape == (2, 1, 8 * 640) and audio.dtype == torch.float32
    assert torch.equal(codec.encode(wav[1:]), tokens[1:])  # batch items are tokenized independently


def test_encodec_offline_without_weights_fails_at_once_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    try:
        codec_lib.open_codec("encodec_32khz")
    except C.CodecUnavailable as e:
        message = str(e)
    else:
        pytest.skip("facebook/encodec_32khz is in this machine's Hugging Face cache")
    assert time.perf_counter() - t0 < 30
    assert "huggingface-cli download facebook/encodec_32khz" in message
    assert "--codec-weights" in message and "--codec spectral" in message
    assert dsp.FIT_HINT in message                  # the offline alternative, added by the factory
    assert "HF_HUB_OFFLINE" in message


def test_encodec_missing_local_weights_folder_is_named(tmp_path):
    missing = str(tmp_path / "no-such-dir")
    with pytest.raises(C.CodecUnavailable, match="no-such-dir.*does not exist(.|\n)*--codec spectral"):
        codec_lib.open_codec("encodec_32khz", missing)
    with pytest.raises(C.CodecUnavailable, match="holds no config.json"):
        C.load_encodec(str(tmp_path))


def test_unknown_codec_names_are_refused():
    with pytest.raises(ValueError, match="unknown codec spec"):
        codec_lib.load_codec({"name": "mp3"})
    with pytest.raises(ValueError, match="unknown codec 'mp3'"):
        codec_lib.open_codec("mp3")
    with pytest.raises(C.CodecUnavailable, match="--codec-weights FILE"):
        codec_lib.open_codec("spectral", None)
