"""Audio in and out, in one place: reading (whole files or a seeked crop), mono downmix, resampling.

Every other file reaches audio through these functions, so sample-rate and channel handling is the same
for training data, generation contexts and evaluation. Resampling uses soxr (a well-kept polyphase
resampler), never a hand-written one.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import soundfile as sf
import soxr


class AudioError(ValueError):
    """A user-facing problem with an audio file or buffer (missing, unreadable, empty, non-finite)."""


def audio_info(path: str) -> tuple[int, int, int]:
    """Return (sample_rate, frames, channels) of an audio file without reading its samples."""
    if not os.path.isfile(path):
        raise AudioError(f"audio file not found: {path}")
    try:
        info = sf.info(path)
    except Exception as e:  # soundfile raises several types for unreadable files
        raise AudioError(f"cannot read audio file {path}: {e}") from None
    return int(info.samplerate), int(info.frames), int(info.channels)


def read_audio(path: str, start: int = 0, frames: int = -1) -> tuple[np.ndarray, int]:
    """Read `frames` samples from `start` (seeking, not reading the whole file). Returns ([C, S] float32, sr)."""
    audio_info(path)  # clear error for missing / unreadable files
    try:
        with sf.SoundFile(path) as f:
            sr = f.samplerate
            if start > 0:
                f.seek(min(start, f.frames))
            x = f.read(frames, dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(f"cannot read audio file {path}: {e}") from None
    return np.ascontiguousarray(x.T), int(sr)


def to_mono(x: np.ndarray) -> np.ndarray:
    """Average channels: [C, S] -> [S]; a 1-D input is returned as is."""
    return x if x.ndim == 1 else x.mean(axis=0)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample [S] or [C, S] float audio from sr_in to sr_out with soxr (high quality)."""
    if sr_in == sr_out:
        return x.astype(np.float32, copy=False)
    if x.ndim == 1:
        return soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32)
    return soxr.resample(x.T, sr_in, sr_out, quality="HQ").T.astype(np.float32).copy()


def check_finite(x: np.ndarray, what: str) -> None:
    """Raise AudioError if the buffer is empty or holds NaN/inf samples."""
    if x.size == 0:
        raise AudioError(f"{what} is empty (no samples)")
    if not np.all(np.isfinite(x)):
        raise AudioError(f"{what} contains NaN or infinite samples")


def load_mono(path: str, sample_rate: int, start: int = 0, frames: int = -1) -> np.ndarray:
    """Read a file (or a crop of it, in the file's own frames), downmix to mono and resample: [S] float32."""
    x, sr = read_audio(path, start, frames)
    x = to_mono(x)
    check_finite(x, path)
    return resample(x, sr, sample_rate)


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad the last axis to exactly n samples."""
    if x.shape[-1] >= n:
        return x[..., :n]
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])])


def atomic_write(path: str, write, suffix: str = "", overwrite: bool = False) -> None:
    """Call write(tmp_path) on a temporary file beside `path`, then rename it into place.

    A crash never leaves a partial file at `path`; an existing file is kept unless overwrite is set.
    """
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"output exists: {path} (pass --force to overwrite)")
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=d, prefix=".tmp-")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_audio(path: str, x: np.ndarray, sample_rate: int, overwrite: bool = False) -> None:
    """Write [S] or [C, S] audio atomically (temporary file, then rename); refuse to overwrite unless asked."""
    if os.path.exists(path) and not overwrite:
        raise AudioError(f"output exists: {path} (pass --force to overwrite)")
    data = x.T if x.ndim == 2 else x
    atomic_write(path, lambda tmp: sf.write(tmp, data, sample_rate), os.path.splitext(path)[1] or ".wav",
                 overwrite=True)
