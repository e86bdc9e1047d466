"""Shared test helpers (test files import them from here, never from one another) and the session's setup."""
import os
import sys

import numpy as np
import soundfile as sf
import torch
import yaml

# Tests import the root's modules (model.py, data.py, ...) and its packages (audio/, spectral/, training/, metrics/, notes/, songs/, page/, cli/).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# A tiny slice of Slakh2100 (CC BY 4.0), vendored: see tests/fixtures/slakh/README.md.
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "slakh")

from codec import ENCODEC_32KHZ_CONFIG, EncodecCodec  # noqa: E402  (after the root is on the path)

STEM_SR = 8000  # the sample rate write_stem and tone use unless told otherwise


def chord(midi_pitches, seconds, sr, rng):
    """Harmonic tones (6 partials, 1/h amplitudes, decaying) summed: a synthetic chord [S]."""
    t = np.arange(int(seconds * sr)) / sr
    x = np.zeros_like(t)
    for p in midi_pitches:
        f0 = 440.0 * 2 ** ((p - 69) / 12)
        for h in range(1, 7):
            if h * f0 < sr / 2:
                x += np.sin(2 * np.pi * h * f0 * t + rng.uniform(0, 2 * np.pi)) / h
    return (0.1 * x * np.exp(-t / seconds)).astype(np.float32)


def bass_line(seconds, sr, seed=0):
    """Octave pairs walking up (MIDI 40, 43, 45, 47 and their octaves), one every half second (120 BPM), loud
    enough to transcribe: [S] float32, S = int(seconds * sr). A context for the copy model to give back."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    notes = [40, 43, 45, 47] * int(np.ceil(seconds / 2))
    y = np.concatenate([chord([p, p + 12], 0.5, sr, rng) * 4 for p in notes])[:n]
    return np.pad(y, (0, n - len(y)))


def random_triads(seconds_each, n, sr, rng):
    """A sequence of n random major/minor triads in random octaves."""
    parts = []
    for _ in range(n):
        root = int(rng.integers(45, 69))
        third = 4 if rng.random() < 0.5 else 3
        parts.append(chord([root, root + third, root + 7], seconds_each, sr, rng))
    return np.concatenate(parts)


def write_stem(path, x, sr=STEM_SR):
    """A stem file: the mono buffer x written as stereo (x, x / 2), so that readers must downmix."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, np.stack([x, 0.5 * x], 1), sr)


def tone(seconds, hz, amp=0.3, sr=STEM_SR):
    """A sine of `seconds` at `hz`: [S] float32."""
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def write_track(root, stems: dict, split="train", name="Track00001"):
    """stems: {SNN: (inst_class, mono buffer)} written in the Slakh layout."""
    d = os.path.join(root, split, name)
    for s, (_, x) in stems.items():
        write_stem(os.path.join(d, "stems", s + ".wav"), x)
    with open(os.path.join(d, "metadata.yaml"), "w") as f:
        yaml.safe_dump({"stems": {s: {"inst_class": c} for s, (c, _) in stems.items()}}, f)
    return d


def tiny_encodec():
    """The encodec_32khz architecture family (32 kHz, strides 8*5*4*4 = 640) shrunk, with random weights."""
    from transformers import EncodecConfig, EncodecModel
    cfg = dict(ENCODEC_32KHZ_CONFIG, num_filters=4, hidden_size=16, codebook_dim=16, codebook_size=64,
               num_lstm_layers=1, target_bandwidths=[1.2])  # 1.2 kbps / (50 Hz * 6 bits) = 4 levels
    torch.manual_seed(0)
    model = EncodecModel(EncodecConfig(**cfg))
    for layer in model.quantizer.layers:  # the init leaves codebooks at zero: give them distinct codewords
        layer.codebook.embed.normal_()
    return EncodecCodec(model, source="random-test-weights")


TEST_CACHE: list[str] = []


def pytest_configure(config):
    # activity caches (activity.py) of the datasets the tests read go to one temporary folder, not beside the
    # fixtures in the repository nor into the user's cache; tests of the default location unset this
    import tempfile
    TEST_CACHE.append(tempfile.mkdtemp(prefix="stemgen-test-cache-"))
    os.environ["STEMGEN_CACHE_DIR"] = TEST_CACHE[0]
    config.addinivalue_line("markers", "slow: end-to-end and subprocess tests; `-m 'not slow'` runs the property "
                                       "tests alone, in seconds")


def pytest_unconfigure(config):
    import shutil
    if TEST_CACHE:
        shutil.rmtree(TEST_CACHE[0], ignore_errors=True)


CORPUS_PARTS = (("S00", 0, "Piano", 60), ("S01", 48, "Strings", 72), ("S02", 33, "Bass", 36))  # name, program, label, octave


def write_corpus(root, pieces=2, transpositions=range(12), seconds=2.0, sr=16000, chords=4):
    """A Slakh-layout folder of transposed renderings: piece p in each transposition t is a track whose
    metadata.yaml says `corpus: {piece: "p<p>", transpose: t}`. Every piece is a seeded progression of major and
    minor triads: piano and strings play the triads, the bass their roots. Returns the folder."""
    import soundfile as sf
    import yaml
    os.makedirs(root, exist_ok=True)
    for p in range(pieces):
        prog = np.random.default_rng([p, 99])
        progression = [(int(prog.integers(12)), 4 if prog.random() < 0.5 else 3) for _ in range(chords)]
        for t in transpositions:
            track = os.path.join(root, f"Track{p * 12 + t:05d}")
            os.makedirs(os.path.join(track, "stems"))
            rng = np.random.default_rng([p, t])
            meta = {"stems": {}, "corpus": {"piece": f"p{p}", "transpose": int(t)}}
            for name, program, label, octave in CORPUS_PARTS:
                notes = ([[octave + r + t]] if label == "Bass" else [[octave + r + t + i for i in (0, third, 7)]]
                         for r, third in progression)
                wave = np.concatenate([chord(n[0], seconds / chords, sr, rng) for n in notes])
                sf.write(os.path.join(track, "stems", name + ".wav"), wave, sr)
                meta["stems"][name] = {"program_num": program, "is_drum": False, "inst_class": label}
            with open(os.path.join(track, "metadata.yaml"), "w") as f:
                yaml.safe_dump(meta, f)
    return root

# ---------------------------------------------------------------------------------------------------------
# A tiny checkpoint for tests that run the whole generation pipeline (the app's): a spectral codec fitted on
# a few seconds of synthetic chords, and a model small enough to generate in a fraction of a second.

def tiny_spectral_codec(folder, sample_rate=16000, n_q=2, bins=16):
    """A spectral codec (n_q levels x bins) fitted on three one-second synthetic chords written to `folder`."""
    import soundfile as sf
    from spectral import fit as spectral_fit
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for k, pitches in enumerate([(45, 57), (60, 64, 67), (50, 74)]):
        sf.write(os.path.join(folder, f"part{k}.wav"), chord(pitches, 1.0, sample_rate, rng) * 4, sample_rate)
    return spectral_fit.fit_spectral(str(folder), None, n_q=n_q, bins=bins, dim=8, sample_rate=sample_rate, n_fft=512,
                                 seconds_per_track=1.0, griffin_lim_iters=8, progress=False)


def tiny_copy_checkpoint(path, codec, classes=("Piano", "Bass", "Drums"), crop_seconds=None):
    """A hand-set model with no transformer layer whose target token at each position is the context's token
    (its stem is the codec round trip of the context: pitched wherever the context is), saved as a checkpoint
    that says it trained on `classes`. Returns the path."""
    from dataclasses import replace

    import torch

    import model as model_lib
    from training.checkpoint import config_dict, save_checkpoint
    from audio.instruments import INSTRUMENTS
    n_q, bins = codec.n_q, codec.bins
    cfg = replace(model_lib.PRESETS["tiny"], n_q=n_q, bins=bins, dim=4 * n_q * bins, n_heads=2, n_layers=0)
    net = model_lib.StemGen(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.norm.weight.fill_(1.0)
        for q in range(n_q):
            net.context_embed.tables[q].weight[:, q * bins:(q + 1) * bins] = torch.eye(bins)
            net.heads[q].weight[:, q * bins:(q + 1) * bins] = 20 * torch.eye(bins)
    ckpt = {"model_config": config_dict(net.cfg), "model": net.state_dict(), "codec_spec": codec.spec(), "step": 0,
            "class_counts": {name: (10 if name in classes else 0) for name in INSTRUMENTS}}
    if crop_seconds:
        ckpt["train_args"] = {"crop_seconds": crop_seconds}
    save_checkpoint(str(path), ckpt)
    return str(path)


import pytest  # noqa: E402  (the fixture below; the helpers above need only numpy)


@pytest.fixture(scope="session")
def tiny_app_checkpoint(tmp_path_factory):
    """tiny_copy_checkpoint on a tiny_spectral_codec (16 kHz, 2 levels x 16 bins), trained on piano, bass, drums."""
    folder = tmp_path_factory.mktemp("tiny_app")
    codec = tiny_spectral_codec(folder / "codec_data")
    return tiny_copy_checkpoint(folder / "copy.pt", codec)


def serve_app(checkpoint, **engine_args):
    """page.engine.Engine on a checkpoint (CPU) with app.py's HTTP server on a free port of 127.0.0.1, serving
    from a thread. Returns (engine, server, base URL without the final /); stop_app ends both."""
    import threading

    import app
    from page.engine import Engine
    engine = Engine(checkpoint, device="cpu", **engine_args)
    server = app.make_server(engine, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return engine, server, app.address(server).rstrip("/")


def stop_app(engine, server):
    """Stop a serve_app server and its engine; the engine's temporary folder must be gone after."""
    server.shutdown()
    server.server_close()
    engine.close()
    assert not os.path.exists(engine.store.root)
