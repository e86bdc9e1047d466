"""generate.py end to end on CPU: a tiny checkpoint (random-weight or hand-set "copy" model) with a spectral
codec fitted on two seconds of synthetic tones, 2 levels x 16 bins, few decoding steps."""
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

import decode
import generate
import model as model_lib
from spectral import fit as spectral_fit
from training.checkpoint import config_dict, load_model, save_checkpoint
from conftest import ROOT, tiny_copy_checkpoint
from audio.instruments import INSTRUMENTS

SR = 16000          # codec rate of the test codec
N_Q, BINS = 2, 16
FAST = ["--steps", "3", "2", "--quiet", "--device", "cpu"]


def tones(seconds, sr, freqs=(220.0, 277.2, 329.6), channels=1, seed=0):
    """A sustained chord with a little noise: [C, S] float32 (musical enough to fit a codec on)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in freqs) / (2 * len(freqs))
    x = x + 0.01 * rng.standard_normal(t.shape)
    return np.stack([x * (1 - 0.2 * c) for c in range(channels)]).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_codec(tmp_path_factory):
    d = tmp_path_factory.mktemp("codec_data")
    for k, freqs in enumerate([(110.0, 220.0), (261.6, 329.6, 392.0), (146.8, 587.3)]):
        sf.write(str(d / f"part{k}.wav"), tones(1.0, SR, freqs, seed=k)[0], SR)
    return spectral_fit.fit_spectral(str(d), None, n_q=N_Q, bins=BINS, dim=8, sample_rate=SR, n_fft=512,
                                  seconds_per_track=1.0, griffin_lim_iters=8, progress=False)


def write_checkpoint(path, net, tok, crop_seconds=None):
    ckpt = {"model_config": config_dict(net.cfg), "model": net.state_dict(),
            "codec_spec": tok.spec(), "step": 0}
    if crop_seconds:
        ckpt["train_args"] = {"crop_seconds": crop_seconds}
    save_checkpoint(str(path), ckpt)
    return str(path)


@pytest.fixture(scope="module")
def random_ckpt(tiny_codec, tmp_path_factory):
    """A random-weight tiny model: non-trivial, seed-dependent tokens."""
    torch.manual_seed(0)
    cfg = replace(model_lib.PRESETS["tiny"], n_q=N_Q, bins=BINS, dim=32, n_heads=2, n_layers=1)
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "random.pt", model_lib.StemGen(cfg), tiny_codec)


@pytest.fixture(scope="module")
def copy_ckpt(tiny_codec, tmp_path_factory):
    """A hand-set model (no transformer layers) whose target token at each position copies the context token.

    Its stem is the codec round trip of the context, so any misalignment or seam the windowing adds shows.
    """
    return tiny_copy_checkpoint(tmp_path_factory.mktemp("ckpt") / "copy.pt", tiny_codec, classes=INSTRUMENTS,
                                crop_seconds=0.8)


def run_cli(argv, capsys):
    rc = generate.main(argv)
    return rc, capsys.readouterr().err


def write_context(path, seconds=1.3, sr=22050, channels=2, seed=0):
    x = tones(seconds, sr, channels=channels, seed=seed)
    sf.write(str(path), x.T, sr, subtype="FLOAT")
    return x


def spy_generate_tokens(monkeypatch):
    """Record every decode.generate_tokens call made by generate.py: (context, prompt, output)."""
    calls = []
    real = decode.generate_tokens

    def spy(net, context, instrument, sampling, prompt=None, **kw):
        out = real(net, context, instrument, sampling, prompt=prompt, **kw)
        calls.append((context.clone(), None if prompt is None else prompt.clone(), out.clone()))
        return out

    monkeypatch.setattr(decode, "generate_tokens", spy)
    return calls


# ---------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_stem_and_mix_match_input_rate_length_and_channels(random_ckpt, tmp_path, capsys):
    ctx = tmp_path / "song.wav"
    x = write_context(ctx, seconds=1.3, sr=22050, channels=2)
    rc, err = run_cli(["--context", str(ctx), "--instrument", "piano", "--mix", "--checkpoint", random_ckpt,
                       "--seed", "1", *FAST], capsys)
    assert rc == 0, err
    stem, sr = sf.read(str(tmp_path / "song.piano.wav"), dtype="float32")
    mix, mix_sr = sf.read(str(tmp_path / "song.with-piano.wav"), dtype="float32")
    assert sr == mix_sr == 22050
    assert stem.shape == (x.shape[1],)                      # mono stem, input length
    assert mix.shape == (x.shape[1], 2)                     # all input channels kept
    assert np.abs(stem).max() > 1e-3                        # something was generated
    # mix = input + stem, all scaled alike (and said so) when the sum would clip
    gain = 1.0 if "scaled by" not in err else float(np.sum((mix - stem[:, None]) * x.T) / np.sum(x.T ** 2))
    assert 0.1 < gain <= 1.0
    np.testing.assert_allclose(mix, gain * x.T + stem[:, None], atol=2 / 2 ** 15)  # PCM-16 rounding


@pytest.mark.slow
@pytest.mark.parametrize("ext,subtype", [(".wav", "PCM_24"), (".wav", "FLOAT"), (".flac", "PCM_24")])
def test_outputs_keep_the_context_format_and_are_readable_by_others(random_ckpt, tmp_path, capsys, ext, subtype):
    """A 48 kHz 24-bit stereo context gives 24-bit stem and mix (float gives float, flac gives flac), written
    with the permissions open() would give (0o666 less the umask), not 0o600."""
    ctx = tmp_path / f"song{ext}"
    x = tones(1.0, 48000, channels=2)
    sf.write(str(ctx), x.T, 48000, subtype=subtype)
    old = os.umask(0o022)
    try:
        rc, err = run_cli(["--context", str(ctx), "--instrument", "bass", "--mix", "--checkpoint", random_ckpt,
                           "--seed", "0", *FAST], capsys)
    finally:
        os.umask(old)
    assert rc == 0, err
    for name, channels in [(f"song.bass{ext}", 1), (f"song.with-bass{ext}", 2)]:
        info = sf.info(str(tmp_path / name))
        assert (info.format, info.subtype) == (ext[1:].upper(), subtype)
        assert (info.samplerate, info.channels, info.frames) == (48000, channels, x.shape[1])
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o644


@pytest.mark.slow
def test_the_command_passes_its_seed_to_decoding(random_ckpt, tmp_path, capsys):
    """--seed reaches the decoder: the same seed twice writes the same stem, another seed another one (that a
    seed fixes the tokens is decode.py's, tested in test_decode)."""
    ctx = tmp_path / "ctx.wav"
    write_context(ctx, seconds=1.0, sr=SR, channels=1)
    outs = {}
    for name, seed in [("a", 5), ("b", 5), ("c", 6)]:
        out = tmp_path / f"{name}.wav"
        rc, err = run_cli(["--context", str(ctx), "--instrument", "bass", "--out", str(out),
                           "--checkpoint", random_ckpt, "--seed", str(seed), *FAST], capsys)
        assert rc == 0, err
        outs[name] = sf.read(str(out))[0]
    np.testing.assert_array_equal(outs["a"], outs["b"])
    assert not np.array_equal(outs["a"], outs["c"])


@pytest.mark.slow
def test_long_context_goes_through_windows_with_decoded_prompts(random_ckpt, tiny_codec, tmp_path, monkeypatch,
                                                                capsys):
    ctx = tmp_path / "long.wav"
    write_context(ctx, seconds=2.3, sr=SR, channels=1)
    calls = spy_generate_tokens(monkeypatch)
    rc, err = run_cli(["--context", str(ctx), "--instrument", "guitar", "--checkpoint", random_ckpt,
                       "--window", "0.8", "--overlap", "0.3", "--seed", "0", *FAST], capsys)
    assert rc == 0, err
    window, overlap = round(0.8 * tiny_codec.frame_rate), round(0.3 * tiny_codec.frame_rate)     # in frames
    plan = decode.plan_windows(round(2.3 * tiny_codec.frame_rate), window, overlap)
    assert len(calls) == len(plan) == 4
    for (context, prompt, _), (start, end, p), prev in zip(calls, plan, [None] + calls[:-1]):
        assert context.shape[-1] == end - start == window
        if prev is None:
            assert prompt is None
        else:                                                # the overlap of the previous window's output
            assert prompt.shape[-1] == p >= overlap
            np.testing.assert_array_equal(prompt.numpy(), prev[2][..., window - p:].numpy())
    stem, sr = sf.read(str(tmp_path / "long.guitar.wav"))
    assert sr == SR and len(stem) == int(2.3 * SR)


def level_jump_db(x, at, width):
    """|level before - level after| of sample position `at`, RMS over `width` samples each side, in dB."""
    before, after = x[at - width:at], x[at:at + width]
    return abs(10 * np.log10(np.mean(before ** 2) + 1e-10) - 10 * np.log10(np.mean(after ** 2) + 1e-10))


@pytest.mark.slow
def test_windowed_stem_has_no_seam(copy_ckpt, random_ckpt, tiny_codec, tmp_path, monkeypatch, capsys):
    """generate.py windows a context by its checkpoint's training crop and stitches the windows at token level
    before one codec decode: the copy model's windowed stem, written by the command, is the codec round trip of
    the context (the token-level property is test_decode's). And a generated stem jumps in level at window
    boundaries no more than elsewhere."""
    ctx = tmp_path / "ctx.wav"
    x = write_context(ctx, seconds=3.0, sr=SR, channels=1)
    common = ["--context", str(ctx), "--instrument", "organ", "--seed", "0", *FAST]
    calls = spy_generate_tokens(monkeypatch)
    for name, ckpt, window in [("copy_win", copy_ckpt, []),      # the checkpoint's 0.8 s crop, half overlapping
                               ("rand_win", random_ckpt, ["--window", "0.8", "--overlap", "0.4"])]:
        rc, err = run_cli(common + ["--checkpoint", ckpt, "--out", str(tmp_path / f"{name}.wav"), *window,
                                    "--steps", "200", "100"],  # per 1000 frames: 8, 4 per window, 4, 2 past the
                          capsys)                            # overlap
        assert rc == 0, err
    n_frames = round(3.0 * tiny_codec.frame_rate)
    plan = decode.plan_windows(n_frames, round(0.8 * tiny_codec.frame_rate), round(0.4 * tiny_codec.frame_rate))
    assert len(plan) == 7 and len(calls) == 2 * len(plan)    # both runs went through the same windows
    stem = {n: sf.read(str(tmp_path / f"{n}.wav"), dtype="float32")[0] for n in ("copy_win", "rand_win")}
    tokens = tiny_codec.encode(torch.from_numpy(x[0])[None, None])
    roundtrip = tiny_codec.decode(tokens)[0, 0, :x.shape[1]].numpy()
    np.testing.assert_allclose(stem["copy_win"], roundtrip, atol=1e-3)

    hop, width = tiny_codec.hop, SR // 20                    # 50 ms either side of each position
    boundaries = {s for s, _, _ in plan[1:]} | {e for _, e, _ in plan[:-1]}   # where a window starts or ends
    y = stem["rand_win"]
    at_boundary = [level_jump_db(y, b * hop, width) for b in sorted(boundaries)]
    elsewhere = [level_jump_db(y, f * hop, width) for f in range(3, n_frames - 3) if f not in boundaries]
    assert max(at_boundary) <= max(elsewhere), (at_boundary, max(elsewhere))


@pytest.mark.slow
def test_several_instruments_in_turn_write_stems_and_mix(random_ckpt, tiny_codec, tmp_path, monkeypatch,
                                                         capsys):
    ctx = tmp_path / "band.wav"
    x = write_context(ctx, seconds=1.0, sr=SR, channels=1)
    calls = spy_generate_tokens(monkeypatch)
    rc, err = run_cli(["--context", str(ctx), "--instrument", "bass", "--instrument", "drums",
                       "--checkpoint", random_ckpt, "--seed", "2", *FAST], capsys)
    assert rc == 0, err
    bass = sf.read(str(tmp_path / "band.bass.wav"), dtype="float32")[0]
    drums = sf.read(str(tmp_path / "band.drums.wav"), dtype="float32")[0]
    mix = sf.read(str(tmp_path / "band.with-bass-drums.wav"), dtype="float32")[0]
    gain = 1.0 if "scaled by" not in err else float(np.sum((mix - bass - drums) * x[0]) / np.sum(x[0] ** 2))
    assert 0.1 < gain <= 1.0                               # all outputs scaled alike when the mix would clip
    np.testing.assert_allclose(mix, gain * x[0] + bass + drums, atol=3 / 2 ** 15)
    # the second stem was generated with the first one added to its context
    assert len(calls) == 2
    first_ctx = tiny_codec.encode(torch.from_numpy(x[0])[None, None])
    bass_codec = tiny_codec.decode(calls[0][2])[0, 0, :x.shape[1]]
    second_ctx = tiny_codec.encode((torch.from_numpy(x[0]) + bass_codec)[None, None])
    np.testing.assert_array_equal(calls[0][0].numpy(), first_ctx.numpy())
    np.testing.assert_array_equal(calls[1][0].numpy(), second_ctx.numpy())
    assert not torch.equal(calls[0][0], calls[1][0])


def _bad(tmp_path, kind, random_ckpt):
    """(argv pieces, expected words in the message) for one kind of bad input."""
    good = tmp_path / "good.wav"
    write_context(good, seconds=0.5, sr=SR, channels=1)
    ctx, inst, ckpt = str(good), "piano", random_ckpt
    if kind == "missing file":
        ctx, words = str(tmp_path / "nope.wav"), ["not found", "nope.wav"]
    elif kind == "unreadable file":
        (tmp_path / "text.wav").write_text("not audio")
        ctx, words = str(tmp_path / "text.wav"), ["cannot read", "text.wav"]
    elif kind == "empty audio":
        sf.write(str(tmp_path / "empty.wav"), np.zeros(0, np.float32), SR)
        ctx, words = str(tmp_path / "empty.wav"), ["empty"]
    elif kind == "silent audio":
        sf.write(str(tmp_path / "silent.wav"), np.zeros(SR, np.float32), SR)
        ctx, words = str(tmp_path / "silent.wav"), ["silent"]
    elif kind == "NaN samples":
        y = tones(0.5, SR)[0]
        y[100] = np.nan
        sf.write(str(tmp_path / "nan.wav"), y, SR, subtype="FLOAT")
        ctx, words = str(tmp_path / "nan.wav"), ["NaN"]
    elif kind == "unknown instrument":
        inst, words = "kazoo", ["kazoo", "Piano", "Synth Lead", "Drums"]
    elif kind == "missing checkpoint":
        ckpt, words = str(tmp_path / "none.pt"), ["checkpoint not found", "python train.py"]
    elif kind == "codec unavailable":
        ck = torch.load(random_ckpt, weights_only=True)
        ck["codec_spec"] = {"name": "spectral", "source": str(tmp_path / "gone_codec.pt")}
        ckpt = str(tmp_path / "nocodec.pt")
        save_checkpoint(ckpt, ck)
        words = ["gone_codec.pt", "python -m spectral.fit"]
    elif kind == "a folder as context":
        (tmp_path / "folder.wav").mkdir()
        ctx, words = str(tmp_path / "folder.wav"), ["is a folder, not an audio file"]
    elif kind == "one sample":
        sf.write(str(tmp_path / "one.wav"), np.full(1, 0.5, np.float32), SR)
        ctx, words = str(tmp_path / "one.wav"), ["at least 0.1 s"]
    elif kind == "untrained instrument":
        ck = torch.load(random_ckpt, weights_only=True)
        ck["class_counts"] = {name: {"Piano": 10, "Bass": 3}.get(name, 0) for name in INSTRUMENTS}
        ckpt, inst = str(tmp_path / "counted.pt"), "synth effects"
        save_checkpoint(ckpt, ck)
        words = ["never trained on Synth Effects", "it trained on: piano (10), bass (3)"]
    return ["--context", ctx, "--instrument", inst, "--checkpoint", ckpt], words


@pytest.mark.parametrize("kind", ["missing file", "unreadable file", "empty audio", "silent audio", "NaN samples",
                                  "unknown instrument", "missing checkpoint", "codec unavailable",
                                  "untrained instrument", "a folder as context", "one sample"])
@pytest.mark.slow
def test_bad_input_gives_one_clear_line_and_no_output(kind, random_ckpt, tmp_path, capsys):
    argv, words = _bad(tmp_path, kind, random_ckpt)
    before = set(os.listdir(tmp_path))
    rc, err = run_cli(argv + ["--out", str(tmp_path / "stem.wav"), *FAST], capsys)
    assert rc != 0
    assert err.startswith("error: ") and "Traceback" not in err
    if kind == "untrained instrument":
        assert err.count("\n") == 1                          # the refusal and its classes in one line
    for w in words:
        assert w in err, (w, err)
    assert set(os.listdir(tmp_path)) == before                # nothing written, no temporary left


@pytest.mark.slow
def test_existing_output_needs_force(random_ckpt, tmp_path, capsys):
    ctx = tmp_path / "c.wav"
    write_context(ctx, seconds=0.5, sr=SR, channels=1)
    out = tmp_path / "c.piano.wav"
    out.write_bytes(b"user's file")
    argv = ["--context", str(ctx), "--instrument", "piano", "--checkpoint", random_ckpt, *FAST]
    rc, err = run_cli(argv, capsys)
    assert rc != 0 and "--force" in err and out.read_bytes() == b"user's file"
    rc, err = run_cli(argv + ["--force"], capsys)
    assert rc == 0, err
    assert sf.read(str(out))[0].shape == (SR // 2,)
    rc, err = run_cli(["--context", str(ctx), "--instrument", "piano", "--out", str(ctx), "--force",
                       "--checkpoint", random_ckpt, *FAST], capsys)
    assert rc != 0 and "context file itself" in err


@pytest.mark.slow
def test_progress_total_is_the_number_of_steps_run(random_ckpt, monkeypatch):
    """The bar's total counts the steps of every window, scaled to the frames each decodes, for every stem."""
    bars = []

    class Bar:
        def __init__(self, total, **kw):
            self.total, self.done = total, 0
            bars.append(self)

        def update(self, n):
            self.done += n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(generate, "tqdm", Bar)
    net, tok, _ = load_model(random_ckpt, torch.device("cpu"))
    context = tones(2.3, SR)[0]                              # 115 frames: 4 windows of 40 with 15 overlapping
    sampling = decode.Sampling(steps=(200, 100), guidance="none")
    generate.generate_stems(net, tok, context, [0, 3], sampling, 40, 15, progress=True)
    assert len(bars) == 1 and bars[0].done == bars[0].total
    assert bars[0].total < 2 * 4 * sum(sampling.level_steps(40))          # windows after the first decode less


def test_naive_setting_and_flag_overrides():
    assert decode.Sampling() == decode.Sampling(steps=(128, 64, 32, 32), w_c=0.1, w_s=0.1, w_r=1.0,
                                                    guidance="multi", scale_audio=3.0, scale_instrument=3.0)
    naive = decode.Sampling.naive()
    assert naive.guidance == "none" and naive.w_s == 0.0 and naive.w_r == 1.0
    args = generate.build_parser().parse_args(["--context", "x", "--instrument", "piano", "--naive",
                                               "--w-s", "0.2", "--steps", "4", "4"])
    s = decode.resolve_sampling(args)[0]
    assert s.guidance == "none" and s.w_s == 0.2 and s.steps == (4, 4)


def test_the_checkpoints_recommended_sampling_sits_between_the_papers_values_and_the_flags():
    args = generate.build_parser().parse_args(["--context", "x", "--instrument", "piano", "--scale-audio", "2"])
    recommended = {"fine_temperature": 0.0, "scale_audio": 6.0, "temperature": 0.8}
    s = decode.resolve_sampling(args, recommended)[0]
    assert (s.fine_temperature, s.temperature, s.scale_audio) == (0.0, 0.8, 2.0)          # the flag wins
    assert s.scale_instrument == decode.Sampling().scale_instrument                       # the paper's
    args.paper_sampling = True
    assert decode.resolve_sampling(args, recommended)[0] == replace(decode.Sampling(), scale_audio=2.0)
    import evaluate                                            # evaluate.py's flags must not mask it with defaults
    eargs = evaluate.build_parser().parse_args(["--data", "d", "--out", "o"])
    assert decode.resolve_sampling(eargs, recommended)[0] == replace(decode.Sampling(), **recommended)
    eargs = evaluate.build_parser().parse_args(["--data", "d", "--out", "o", "--w-s", "0.3", "--paper-sampling"])
    assert decode.resolve_sampling(eargs, recommended)[0] == replace(decode.Sampling(), w_s=0.3)


@pytest.mark.slow
def test_generate_applies_and_names_the_checkpoints_recommended_sampling(random_ckpt, tmp_path, monkeypatch, capsys):
    ckpt = torch.load(random_ckpt, weights_only=True)
    ckpt["sampling"] = {"fine_temperature": 0.0}
    path = tmp_path / "tuned.pt"
    save_checkpoint(str(path), ckpt)
    seen = []
    real = decode.generate_tokens
    monkeypatch.setattr(decode, "generate_tokens", lambda net, c, i, sampling, **kw: (
        seen.append(sampling), real(net, c, i, sampling, **kw))[1])
    ctx = tmp_path / "ctx.wav"
    write_context(ctx, seconds=0.6, sr=SR, channels=1)
    base = ["--context", str(ctx), "--instrument", "bass", "--checkpoint", str(path), "--seed", "0",
            "--steps", "3", "2", "--device", "cpu", "--force", "--out", str(tmp_path / "s.wav")]
    rc, err = run_cli(base, capsys)
    assert rc == 0, err
    assert seen[-1].fine_temperature == 0.0 and "fine_temperature=0.0, as the checkpoint recommends" in err
    for extra, expected in [(["--fine-temperature", "0.5"], 0.5), (["--paper-sampling"], None)]:
        rc, err = run_cli(base + extra, capsys)
        assert rc == 0 and seen[-1].fine_temperature == expected, err
    assert "as the checkpoint recommends" not in err                   # --paper-sampling: nothing applied


@pytest.mark.slow
def test_command_line_error_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "generate.py"), "--context",
                        str(tmp_path / "missing.wav"), "--instrument", "piano"],
                       capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1 and "missing.wav" in r.stderr


def test_help_and_a_generation_without_midi_load_neither_librosa_nor_pretty_midi(tiny_app_checkpoint, tmp_path):
    """The MIDI path's packages load only with --midi: a plain generation starts faster and needs less."""
    import soundfile as sf
    context = tmp_path / "mix.wav"
    sf.write(context, tones(1.0, SR)[0], SR)
    code = ("import sys, generate\n"
            "try:\n    generate.main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"rc = generate.main(['--context', {str(context)!r}, '--instrument', 'bass', '--checkpoint', "
            f"{tiny_app_checkpoint!r}, '--seed', '1', '--steps', '2', '2', '--quiet'])\n"
            "print('RESULT', rc, sorted(m for m in ('librosa', 'pretty_midi') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert "RESULT 0 []" in out.stdout, out.stderr
    assert (tmp_path / "mix.bass.wav").exists()


def test_every_generation_ends_with_the_fit_line(tiny_app_checkpoint, tmp_path, capsys):
    """One line per new stem: its key fit and chord fit in time, in numbers and words, beside 0 and real parts."""
    import soundfile as sf
    context = tmp_path / "mix.wav"
    sf.write(context, tones(2.0, SR)[0], SR)
    argv = ["--context", str(context), "--instrument", "bass", "--instrument", "piano", "--checkpoint",
            tiny_app_checkpoint, "--seed", "1", "--steps", "2", "2", "--quiet"]
    assert generate.main(argv) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("fit of the new")]
    assert [l.split(":")[0] for l in lines] == ["fit of the new bass", "fit of the new piano"]
    assert all("key " in l and "chords in time" in l and "ignores its context scores 0" in l for l in lines)


def test_the_example_adds_a_bass_to_the_built_in_work_and_says_what_next(tiny_app_checkpoint, tmp_path, monkeypatch,
                                                                          capsys):
    """--example: the shipped held-out context, a bass, outputs in runs/example/ (replaced on a second run, since
    they are the example's own), the fit line and the next commands; --plot draws the harmony picture."""
    monkeypatch.chdir(tmp_path)
    argv = ["--example", "--checkpoint", tiny_app_checkpoint, "--seed", "0", "--steps", "2", "2", "--plot"]
    for _ in range(2):
        assert generate.main(argv) == 0
        captured = capsys.readouterr()
        assert "fit of the new bass" in captured.out and "python app.py" in captured.err
    written = sorted(os.listdir(tmp_path / "runs" / "example"))
    assert written == ["monteverdi-madrigal-4-16.bass.flac", "monteverdi-madrigal-4-16.bass.harmony.png",
                       "monteverdi-madrigal-4-16.with-bass.flac"]
    png = (tmp_path / "runs" / "example" / "monteverdi-madrigal-4-16.bass.harmony.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert generate.main(["--example", "--context", "x.wav", "--checkpoint", tiny_app_checkpoint]) == 2
    assert "not both" in capsys.readouterr().err
    assert generate.main(["--instrument", "bass"]) == 2 and "--example" in capsys.readouterr().err



@pytest.mark.parametrize("flags, words", [
    (["--temperature", "nan"], "finite"), (["--temperature", "inf"], "finite"), (["--scale-audio", "nan"], "finite"),
    (["--w-c", "nan"], "finite"), (["--fine-temperature", "nan"], "finite"), (["--window", "nan"], "--window"),
    (["--seed", "99999999999999999999999"], "2^63"), (["--seed", "-1"], "2^63")])
def test_bad_numbers_are_refused_in_one_line_before_any_work(flags, words, tiny_app_checkpoint, tmp_path, capsys):
    context = tmp_path / "mix.wav"
    sf.write(context, tones(1.0, SR)[0], SR)
    try:
        rc = generate.main(["--context", str(context), "--instrument", "bass", "--checkpoint", tiny_app_checkpoint,
                            "--steps", "2", "2", *flags])
    except SystemExit as e:                                   # argparse's refusal of a flag's value
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and words in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["mix.wav"]


def test_sampling_refuses_values_that_are_not_finite():
    for knob in ("temperature", "fine_temperature", "w_c", "w_s", "w_r", "scale_audio", "scale_instrument"):
        for bad in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match="finite"):
                decode.Sampling(**{knob: bad})


def outputs_case(tmp_path, case):
    """(extra flags, words of the refusal, the file that must keep its bytes or None) for one bad output plan."""
    song = tmp_path / "song.wav"
    if case == "a link to the context":
        (tmp_path / "link.wav").symlink_to(song)
        return ["--context", str(tmp_path / "link.wav"), "--out", str(song), "--force"], "context file itself", song
    if case == "a folder as output":
        (tmp_path / "x.wav").mkdir()
        return ["--out", str(tmp_path / "x.wav"), "--force"], "is a folder", None
    if case == "a missing folder":
        return ["--out", str(tmp_path / "no" / "x.wav")], "does not exist", None
    if case == "two MIDI files on one path":
        return (["--instrument", "piano", "--out", str(tmp_path / "a.wav"), "--out", str(tmp_path / "a.flac"),
                 "--midi"], "two outputs would both be written", None)
    raise ValueError(case)


@pytest.mark.parametrize("case", ["a link to the context", "a folder as output", "a missing folder",
                                  "two MIDI files on one path"])
def test_output_plans_that_would_lose_or_clash_are_refused_before_any_work(case, tiny_app_checkpoint, tmp_path,
                                                                           capsys):
    song = tmp_path / "song.wav"
    sf.write(song, tones(1.0, SR)[0], SR)
    flags, words, kept = outputs_case(tmp_path, case)
    before, bytes_before = sorted(os.listdir(tmp_path)), song.read_bytes()
    context = [] if "--context" in flags else ["--context", str(song)]
    rc = generate.main(context + flags + ["--instrument", "bass", "--checkpoint", tiny_app_checkpoint,
                                          "--steps", "2", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and words in err and "Traceback" not in err, err
    assert sorted(os.listdir(tmp_path)) == before and song.read_bytes() == bytes_before


def test_a_write_that_fails_leaves_no_output_and_says_so_in_one_line(tiny_app_checkpoint, tmp_path, monkeypatch,
                                                                      capsys):
    """All outputs are written to temporary files, then renamed together: a failure on the mix leaves no stem."""
    from audio import files as audio_files
    song = tmp_path / "song.wav"
    sf.write(song, tones(1.0, SR)[0], SR)
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("with-bass.wav"):
            raise PermissionError(13, "Permission denied", str(dst))
        real_replace(src, dst)
    monkeypatch.setattr(audio_files.os, "replace", failing_replace)
    rc = generate.main(["--context", str(song), "--instrument", "bass", "--checkpoint", tiny_app_checkpoint,
                        "--steps", "2", "2", "--mix"])
    err = capsys.readouterr().err
    assert rc == 2 and "Permission denied" in err and "no output was written" in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["song.wav"]


def test_a_long_job_is_announced_with_its_steps_and_time_even_under_quiet(tiny_app_checkpoint, tmp_path, monkeypatch,
                                                                          capsys):
    context = tmp_path / "mix.wav"
    sf.write(context, tones(1.0, SR)[0], SR)
    import re
    monkeypatch.setattr(generate, "LONG_JOB_STEPS", 0)        # any job is "long" for this test
    argv = ["--context", str(context), "--instrument", "bass", "--checkpoint", tiny_app_checkpoint, "--steps", "2",
            "2", "--quiet", "--seed", "1"]
    assert generate.main(argv) == 0
    found = re.search(r"long job: (\d+) decoding steps planned, about \d+ min", capsys.readouterr().err)
    assert found and int(found.group(1)) > 0
    monkeypatch.setattr(generate, "LONG_JOB_STEPS", int(found.group(1)))    # at the threshold: not long
    assert generate.main(argv + ["--force"]) == 0
    assert "long job" not in capsys.readouterr().err


def test_sigterm_stops_a_generation_as_ctrl_c_does_writing_nothing(tiny_app_checkpoint, tmp_path, monkeypatch, capsys):
    import signal
    context = tmp_path / "mix.wav"
    sf.write(context, tones(1.0, SR)[0], SR)

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)                  # as `kill PID` from another shell, mid-generation
        raise AssertionError("SIGTERM did not stop the generation")
    monkeypatch.setattr(generate, "generate_stems", terminated)
    before = signal.getsignal(signal.SIGTERM)
    rc = generate.main(["--context", str(context), "--instrument", "bass", "--checkpoint", tiny_app_checkpoint,
                        "--steps", "2", "2", "--quiet"])
    assert rc == 130 and "interrupted: no output written" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["mix.wav"]
    assert signal.getsignal(signal.SIGTERM) == before          # the handler is the caller's again


def test_ctrl_c_while_the_outputs_are_renamed_lets_them_all_land_and_says_so(tiny_app_checkpoint, tmp_path,
                                                                            monkeypatch, capsys):
    import signal
    from audio import files as audio_files
    context = tmp_path / "mix.wav"
    sf.write(context, tones(1.0, SR)[0], SR)
    real_replace = os.replace

    def interrupted(src, dst):
        real_replace(src, dst)
        os.kill(os.getpid(), signal.SIGINT)                   # Ctrl-C after the first rename
    monkeypatch.setattr(audio_files.os, "replace", interrupted)
    rc = generate.main(["--context", str(context), "--instrument", "bass", "--instrument", "piano", "--checkpoint",
                        tiny_app_checkpoint, "--steps", "2", "2", "--quiet"])
    assert rc == 130 and "interrupted just after every output was written" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["mix.bass.wav", "mix.piano.wav", "mix.wav", "mix.with-bass-piano.wav"]
