"""metrics/harmony.py: key fit, chord fit in time and movement, on a diatonic progression whose bass follows it."""
import numpy as np
import pytest

from conftest import chord
from metrics import harmony

SR = 16000
BEAT = 0.5
# C major, one chord per two beats: I vi IV V iii ii (roots, and whether the triad is minor), three times
PROGRESSION = [(60, 0), (57, 1), (65, 0), (67, 0), (64, 1), (62, 1)] * 3


def context_and_bass(transpose=0, seed=0):
    """The progression's triads (middle register) and its real bass: the chord's root then its fifth, a beat each."""
    rng = np.random.default_rng(seed)
    ctx, bass = [], []
    for root, minor in PROGRESSION:
        r = root + transpose
        ctx.append(chord([r, r + 3 + (not minor), r + 7], 2 * BEAT, SR, rng))
        bass += [chord([r - 24], BEAT, SR, rng) * 3, chord([r - 17], BEAT, SR, rng) * 3]
    return np.concatenate(ctx), np.concatenate(bass)


def test_the_real_bass_follows_key_and_chords_and_moves():
    ctx, bass = context_and_bass()
    f = harmony.fit(bass, ctx, SR)
    assert f["key"] > 0.5 and f["chords"] > 0.3 and f["movement"] > 0.6


def test_a_tonic_drone_fits_the_key_but_not_the_chords():
    """Holding C scores 0 on chords in time (exactly, up to rounding: its one chroma against every frame), while
    the key fit stays well above 0."""
    ctx, bass = context_and_bass()
    drone = np.concatenate([chord([36], BEAT, SR, np.random.default_rng(k)) * 3 for k in range(len(bass) // int(BEAT * SR))])
    f = harmony.fit(drone, ctx, SR)
    assert abs(f["chords"]) < 0.03 and f["key"] > 0.3 and f["movement"] < 0.1
    assert f["chords"] < harmony.fit(bass, ctx, SR)["chords"] - 0.3


def test_the_real_bass_late_by_whole_chords_fits_the_key_but_not_the_chords():
    """Late by one to five chords: each scores well below the bass in time, and about 0 on average (exactly 0
    summed with the bass in time over every shift of a cyclic piece), while the key fit does not move."""
    ctx, bass = context_and_bass()
    real = harmony.fit(bass, ctx, SR)
    late = [harmony.fit(np.roll(bass, int(k * 2 * BEAT * SR)), ctx, SR) for k in range(1, 6)]
    assert all(f["chords"] < real["chords"] - 0.3 and f["key"] == pytest.approx(real["key"]) for f in late)
    assert abs(np.mean([f["chords"] for f in late])) < 0.1


def test_noise_fits_nothing_and_moves_all_the_time():
    ctx, _ = context_and_bass()
    noise = np.random.default_rng(1).standard_normal(len(ctx)) * 0.1
    f = harmony.fit(noise, ctx, SR)
    assert abs(f["key"]) < 0.3 and abs(f["chords"]) < 0.05 and f["movement"] > 0.5


def test_the_bass_of_another_key_fits_well_below_its_own():
    ctx, bass = context_and_bass()
    _, away = context_and_bass(transpose=6)               # the same bass a tritone away
    assert harmony.fit(away, ctx, SR)["key"] < harmony.fit(bass, ctx, SR)["key"] - 0.8


def test_silence_gives_no_figures_rather_than_a_false_zero():
    ctx, bass = context_and_bass()
    assert harmony.fit(np.zeros_like(bass), ctx, SR) == {"key": None, "chords": None, "movement": None}
    assert harmony.fit(bass, np.zeros_like(ctx), SR)["chords"] is None


def test_the_chord_fit_is_zero_for_any_constant_chroma_exactly():
    """The algebra behind the drone: a part with one chroma in every frame scores 0 against any context."""
    rng = np.random.default_rng(2)
    ctx = rng.random((12, 30))
    part = np.repeat(rng.random((12, 1)), 30, axis=1)
    assert harmony.chord_fit(part, ctx) == pytest.approx(0.0, abs=1e-12)


def test_the_words_follow_the_numbers():
    ref = harmony.REAL_BASS
    assert harmony.words(ref["key"], ref["key"]) == "follows"
    assert harmony.words(0.3 * ref["key"], ref["key"]) == "partly follows"
    assert harmony.words(0.15 * ref["key"], ref["key"]) == "barely follows"
    assert harmony.words(0.0, ref["key"]) == harmony.words(-0.5, ref["key"]) == "does not follow"
    line = harmony.fit_line("bass", {"key": 0.3, "chords": 0.0, "movement": 0.5})
    assert "key +0.30 (follows the key)" in line and "(does not follow the chords)" in line
    assert "too little sound to tell" in harmony.fit_line("bass", {"key": None, "chords": None, "movement": None})


def test_the_examples_own_bass_follows_it_and_the_bass_elsewhere_does_not():
    """The built-in example (held-out real music): its real bass follows key and chords; noise and silence do not;
    the real bass a tritone away (played faster, so off in time too) fits well below."""
    import soundfile as sf
    import generate
    ctx, sr = sf.read(generate.EXAMPLE)
    bass, _ = sf.read(generate.EXAMPLE.replace(".flac", ".bass.flac"))
    real = harmony.fit(bass, ctx, sr)
    assert "follows the key" in harmony.fit_line("bass", real) and "(follows the chords)" in harmony.fit_line("bass", real)
    noise = harmony.fit(np.random.default_rng(0).standard_normal(len(ctx)) * 0.05, ctx, sr)
    assert abs(noise["key"]) < 0.3 and abs(noise["chords"]) < 0.05
    assert harmony.fit(np.zeros_like(bass), ctx, sr)["key"] is None
    step = 2 ** (6 / 12)
    away = np.interp(np.arange(len(bass)) * step, np.arange(len(bass)), bass, right=0.0)
    moved = harmony.fit(away, ctx, sr)
    assert moved["key"] < real["key"] - 0.4 and moved["chords"] < real["chords"] - 0.1


def test_the_lag_diagnostic_finds_a_bass_two_frames_late_at_plus_two():
    """scripts/harmony_lag.py: lag 0 is the chord fit itself; a bass one chord (two 0.5 s frames) late fits best
    at lag +2, and its fit there is the fit of the bass in time."""
    from scripts.harmony_lag import lagged_fit
    ctx, bass = context_and_bass()
    cc, pc = harmony.frame_chroma(ctx, SR), harmony.frame_chroma(bass, SR)
    assert lagged_fit(pc, cc, 0) == pytest.approx(harmony.chord_fit(pc, cc))
    late = harmony.frame_chroma(np.concatenate([np.zeros(int(2 * BEAT * SR)), bass]), SR)
    fits = {lag: lagged_fit(late, cc, lag) for lag in range(-4, 5)}
    assert max(fits, key=fits.get) == 2 and fits[2] > fits[0] + 0.3
