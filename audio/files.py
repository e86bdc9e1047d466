"""Audio in and out, in one place: reading (whole files or a seeked crop), mono downmix, resampling.

Every other file reaches audio through these functions, so sample-rate and channel handling is the same
for training data, generation contexts and evaluation. Resampling uses soxr (a well-kept polyphase
resampler), never a hand-written one.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading

import numpy as np
import soundfile as sf
import soxr


class AudioError(ValueError):
    """A user-facing problem with an audio file or buffer (missing, unreadable, empty, non-finite)."""


def _info(path: str):
    """soundfile's description of an audio file, with one clear error when it is missing or unreadable."""
    if os.path.isdir(path):
        raise AudioError(f"{path} is a folder, not an audio file")
    if not os.path.isfile(path):
        raise AudioError(f"audio file not found: {path}")
    try:
        return sf.info(path)
    except Exception as e:  # soundfile raises several types for unreadable files
        raise AudioError(f"cannot read audio file {path}: {e}") from None


def audio_info(path: str) -> tuple[int, int, int]:
    """Return (sample_rate, frames, channels) of an audio file without reading its samples."""
    info = _info(path)
    return int(info.samplerate), int(info.frames), int(info.channels)


def audio_format(path: str) -> tuple[str, str]:
    """The container format and sample subtype of an audio file, e.g. ("WAV", "PCM_24") or ("FLAC", "PCM_16")."""
    info = _info(path)
    return info.format, info.subtype


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


def _new_temporary(directory: str, suffix: str) -> str:
    """Create an empty file with a fresh name in `directory`, with the mode open() gives (0o666 less the umask)."""
    tmp = os.path.join(directory, f".tmp-{secrets.token_hex(8)}{suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return tmp


def atomic_write(path: str, write, suffix: str = "", overwrite: bool = False) -> None:
    """Call write(tmp_path) on a temporary file beside `path`, then rename it into place.

    A crash never leaves a partial file at `path`; an existing file is kept unless overwrite is set. The file
    gets the permissions a plain open() would give it (0o666 less the umask), not a temporary file's 0o600.
    """
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"output exists: {path} (pass --force to overwrite)")
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    write_together([(path, write, suffix)])


class WrittenThenInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM came while write_together renamed its files: every file is written, then it stops."""


@contextlib.contextmanager
def signals_held():
    """Ctrl-C and SIGTERM arriving inside the block are noted, and delivered to their own handlers when it ends.
    (Blocking them with a signal mask would not do: Python runs its handlers for a signal that any other thread of
    the process received, and torch and the page have threads.) Outside the main thread, where Python delivers no
    signal, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending, held = [], (signal.SIGINT, signal.SIGTERM)
    old = {n: signal.signal(n, lambda n, _frame: pending.append(n)) for n in held}
    try:
        yield
    finally:
        for n in held:
            signal.signal(n, signal.SIG_DFL if old[n] is None else old[n])
        try:
            for n in dict.fromkeys(pending):
                signal.raise_signal(n)               # its handler runs now (Ctrl-C's raises KeyboardInterrupt)
        except KeyboardInterrupt:
            raise WrittenThenInterrupted from None


def write_together(items: list[tuple[str, object, str]]) -> None:
    """Write several files all or none: each (path, write(tmp_path), suffix) to a temporary file beside its path
    first; only when every one is written are they renamed into place, with Ctrl-C and SIGTERM held back until
    the renames are done (then WrittenThenInterrupted). On any error no path is touched and every temporary file
    is removed."""
    temporaries = []
    try:
        for path, write, suffix in items:
            temporaries.append(_new_temporary(os.path.dirname(os.path.abspath(path)), suffix))
            write(temporaries[-1])
        with signals_held():
            _rename_all([path for path, _, _ in items], temporaries)
    finally:
        for tmp in temporaries:
            if os.path.exists(tmp):
                os.remove(tmp)


def _rename_all(paths: list[str], temporaries: list[str]) -> None:
    """Rename each temporary file onto its path; if one rename fails, undo those done (an overwritten file is set
    aside first and put back), so that every path is as it was."""
    done = []                                              # (path, where its old file was set aside, or None)
    try:
        for path, tmp in zip(paths, temporaries):
            aside = None
            if os.path.lexists(path):
                aside = _new_temporary(os.path.dirname(os.path.abspath(path)), ".old")
                os.replace(path, aside)
            try:
                os.replace(tmp, path)
            except BaseException:
                if aside:
                    os.replace(aside, path)
                raise
            done.append((path, aside))
    except BaseException:
        for path, aside in reversed(done):
            if aside:
                os.replace(aside, path)
            else:
                os.remove(path)
        raise
    for _, aside in done:
        if aside:
            os.remove(aside)


def output_subtype(path: str, subtype: str | None) -> str | None:
    """`subtype` if the format of `path` (from its extension) can hold it, else that format's default."""
    fmt = os.path.splitext(path)[1].lstrip(".").upper()
    if subtype is None or fmt not in sf.available_formats():
        return None
    return subtype if sf.check_format(fmt, subtype) else sf.default_subtype(fmt)


def audio_writer(x: np.ndarray, sample_rate: int, subtype: str | None, path: str):
    """write(tmp_path) for [S] or [C, S] audio in the format of `path` (its extension) and `subtype` where that
    format can hold it, otherwise the format's default (PCM_16 for wav and flac)."""
    data, subtype = (x.T if x.ndim == 2 else x), output_subtype(path, subtype)
    fmt = os.path.splitext(path)[1].lstrip(".").upper() or "WAV"
    return lambda tmp: sf.write(tmp, data, sample_rate, subtype=subtype, format=fmt)


def write_audio(path: str, x: np.ndarray, sample_rate: int, overwrite: bool = False,
                subtype: str | None = None) -> None:
    """Write [S] or [C, S] audio atomically (temporary file, then rename); refuse to overwrite unless asked."""
    if os.path.exists(path) and not overwrite:
        raise AudioError(f"output exists: {path} (pass --force to overwrite)")
    atomic_write(path, audio_writer(x, sample_rate, subtype, path), os.path.splitext(path)[1] or ".wav",
                 overwrite=True)
