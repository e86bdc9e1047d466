"""codec.py: the interface through the paper's Encodec, clear errors, specs, the round-trip metrics."""
import time

import numpy as np
import pytest
import torch

import codec as C
from conftest import chord

SR = 16000


def tiny_encodec():
    """The encodec_32khz architecture family (32 kHz, strides 8*5*4*4 = 640) shrunk, with random weights."""
    from transformers import EncodecConfig, EncodecModel
    cfg = dict(C.ENCODEC_32KHZ_CONFIG, num_filters=4, hidden_size=16, codebook_dim=16, codebook_size=64,
               num_lstm_layers=1, target_bandwidths=[1.2])  # 1.2 kbps / (50 Hz * 6 bits) = 4 levels
    torch.manual_seed(0)
    model = EncodecModel(EncodecConfig(**cfg))
    for layer in model.quantizer.layers:  # the init leaves codebooks at zero: give them distinct codewords
        layer.codebook.embed.normal_()
    return C.EncodecCodec(model, source="random-test-weights")


def test_encodec_interface_shapes_frame_rate_and_lengths():
    codec = tiny_encodec()
    assert (codec.sample_rate, codec.frame_rate, codec.hop, codec.n_q, codec.bins) == (32000, 50, 640, 4, 64)
    S = 640 * 7 + 100  # not whole frames: padded inside to 8 frames
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
        C.load_encodec(None)
    except C.CodecUnavailable as e:
        message = str(e)
    else:
        pytest.skip("facebook/encodec_32khz is in this machine's Hugging Face cache")
    assert time.perf_counter() - t0 < 30
    assert "huggingface-cli download facebook/encodec_32khz" in message
    assert "--codec-weights" in message and "--codec spectral" in message
    assert "python spectral.py fit" in message
    assert "HF_HUB_OFFLINE" in message


def test_encodec_missing_local_weights_folder_is_named(tmp_path):
    missing = str(tmp_path / "no-such-dir")
    with pytest.raises(C.CodecUnavailable, match="no-such-dir.*does not exist(.|\n)*--codec spectral"):
        C.load_encodec(missing)
    with pytest.raises(C.CodecUnavailable, match="holds no config.json"):
        C.load_encodec(str(tmp_path))


def test_unknown_codec_names_are_refused():
    with pytest.raises(ValueError, match="unknown codec spec"):
        C.load_codec({"name": "mp3"})
    with pytest.raises(ValueError, match="unknown codec 'mp3'"):
        C.open_codec("mp3")
    with pytest.raises(C.CodecUnavailable, match="--codec-weights FILE"):
        C.open_codec("spectral", None)


def test_round_trip_metrics_are_perfect_for_identical_audio():
    x = chord([60, 64, 67], 0.5, SR, np.random.default_rng(3))
    assert C.spectral_convergence(x, x) == 0.0
    assert C.chroma_similarity(x, x, SR) == pytest.approx((1.0, 1.0), abs=1e-5)
    other = chord([61, 66, 70], 0.5, SR, np.random.default_rng(3))
    assert C.chroma_similarity(x, other, SR)[1] < 0.5


def test_round_trip_metrics_see_a_degraded_copy():
    """Spectral convergence grows and chroma agreement falls as noise is added."""
    x = chord([60, 64, 67], 0.5, SR, np.random.default_rng(3))
    noise = np.random.default_rng(4).standard_normal(len(x)).astype(np.float32) * np.abs(x).max()
    sc = [C.spectral_convergence(x, x + a * noise) for a in (0.01, 0.1, 1.0)]
    corr = [C.chroma_similarity(x, x + a * noise, SR)[1] for a in (0.01, 0.1, 1.0)]
    assert 0 < sc[0] < sc[1] < sc[2] and corr[0] > corr[1] > corr[2]
