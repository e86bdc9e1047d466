import os
import sys

import numpy as np

# Tests import the flat top-level modules (model.py, data.py, ...) from the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# A tiny slice of Slakh2100 (CC BY 4.0), vendored: see tests/fixtures/slakh/README.md.
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "slakh")


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


def random_triads(seconds_each, n, sr, rng):
    """A sequence of n random major/minor triads in random octaves."""
    parts = []
    for _ in range(n):
        root = int(rng.integers(45, 69))
        third = 4 if rng.random() < 0.5 else 3
        parts.append(chord([root, root + third, root + 7], seconds_each, sr, rng))
    return np.concatenate(parts)


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
