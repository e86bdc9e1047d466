"""What one request to the page may ask for, checked before any work: an upload's size and what it decodes to,
the sampling options and the seed. Every refusal is a UserError whose message the page shows as it is."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from audio import files as audio_files
from decode import Sampling

MAX_SECONDS = 60.0       # longest context accepted (--max-seconds)
MAX_MB = 64.0            # largest upload accepted (--max-mb)
MAX_STEPS = 1024         # per level, per 1000 frames: a bound on what one request may ask for
MAX_JOB_STEPS = 4000     # decoding steps one request may plan in all (a 60 s context with the defaults: 768 a part)
MAX_DECODED_RATE = 192_000   # decoded uploads are bounded by max_seconds of stereo at this rate
FRESH_SEEDS = 2 ** 31    # fresh seeds are drawn below this; any seed from 0 to 2^63 - 1 may be typed
# First bytes of the audio containers soundfile reads: an upload that starts like one but cannot be read is
# called corrupt rather than "not audio".
AUDIO_MAGIC = (b"RIFF", b"RF64", b"fLaC", b"OggS", b"FORM", b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2",
               b".snd", b"caff", b"wvpk")


class UserError(ValueError):
    """A request the user can fix; its message is shown on the page as it is."""


class BusyError(UserError):
    """Too many generations are waiting: the request is refused, not queued."""


def check_upload_length(length: int, max_bytes: int) -> None:
    """An upload's declared size, before a byte of it is read."""
    if length <= 0:
        raise UserError("The file is empty: choose an audio file (wav, flac, ogg, mp3, aiff).")
    if length > max_bytes:
        raise UserError(f"The file is {length / 2 ** 20:.1f} MB; the limit is {max_bytes / 2 ** 20:g} MB "
                        f"(start the page with --max-mb to change it).")


def check_audio_header(path: str, name: str, max_seconds: float | None) -> tuple[int, int, int]:
    """(rate, frames, channels) of a context file, from its header alone: readable audio, not empty, not longer
    than max_seconds, and not decoding to more than max_seconds of stereo at MAX_DECODED_RATE (a small compressed
    file may decode to gigabytes)."""
    try:
        sr, frames, channels = audio_files.audio_info(path)
    except audio_files.AudioError:
        with open(path, "rb") as f:
            head = f.read(16)
        if head.startswith(AUDIO_MAGIC) or head[8:12] in (b"WAVE", b"AIFF", b"AIFC"):
            raise UserError(f"{name} looks like an audio file but is corrupt: it cannot be decoded.") from None
        raise UserError(f"{name} is not an audio file this page can read (wav, flac, ogg, mp3, aiff).") from None
    if frames <= 0:
        raise UserError(f"{name} holds no audio (0 samples).")
    if max_seconds is not None and frames / sr > max_seconds:
        raise UserError(f"{name} is {frames / sr:.1f} s long; the limit is {max_seconds:g} s "
                        f"(start the page with --max-seconds to change it).")
    limit = (max_seconds or MAX_SECONDS) * MAX_DECODED_RATE * 2
    if frames * channels > limit:
        raise UserError(f"{name} decodes to {frames * channels * 4 / 2 ** 20:.0f} MB ({channels} channels at "
                        f"{sr} Hz); the page takes at most {limit * 4 / 2 ** 20:.0f} MB of decoded audio "
                        f"(stereo at {MAX_DECODED_RATE // 1000} kHz for the longest context).")
    return sr, frames, channels


def sampling_from(options: dict, defaults: Sampling, n_q: int) -> Sampling:
    """The defaults with the page's options (scale_audio, scale_instrument, steps, temperature) applied."""
    given = {}
    try:
        for key in ("scale_audio", "scale_instrument", "temperature"):
            if options.get(key) not in (None, ""):
                given[key] = float(options[key])
                if not math.isfinite(given[key]):
                    raise ValueError
        if options.get("steps") not in (None, "", []):
            steps = options["steps"]
            steps = steps.replace(",", " ").split() if isinstance(steps, str) else steps
            given["steps"] = tuple(int(s) for s in steps)
    except (TypeError, ValueError):
        raise UserError("Guidance scales and temperature must be numbers, steps whole numbers.") from None
    if "steps" in given:
        if len(given["steps"]) != n_q:
            raise UserError(f"Give {n_q} step counts, one per token level (coarsest first).")
        if not all(1 <= s <= MAX_STEPS for s in given["steps"]):
            raise UserError(f"Step counts must be between 1 and {MAX_STEPS}.")
    for key in ("scale_audio", "scale_instrument"):
        if key in given and not 0 <= given[key] <= 100:
            raise UserError("Guidance scales must be between 0 and 100.")
    try:
        return replace(defaults, **given)
    except ValueError as e:
        raise UserError(str(e)) from None


def seed_from(options: dict) -> int:
    """The request's seed, or a fresh one short enough to read off the page and type back."""
    seed = options.get("seed")
    if seed in (None, ""):
        return int(np.random.SeedSequence().entropy % FRESH_SEEDS)
    try:
        seed = int(seed)
        if not 0 <= seed < 2 ** 63:
            raise ValueError
    except (TypeError, ValueError):
        raise UserError("The seed must be a whole number from 0 (or empty for a fresh one).") from None
    return seed
