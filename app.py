"""A local web page to add parts to your music: upload a context (or take the built-in example), choose the
instruments, generate, then listen, look and download (audio in the context's format, and MIDI).

    python app.py                                   # http://127.0.0.1:7860, the shipped checkpoints/stemgen-music.pt
    python app.py --checkpoint runs/default/ckpt.pt --port 8000

The page is one HTML file with plain JavaScript (static/app.html), served by the standard library's http.server:
nothing to install beyond the project's requirements. Generation is generate.py's own pipeline
(checkpoint.load_model, adding.read_context, adding.generate_stems, adding.write_outputs, decode.Sampling),
run for one request at a time by a single worker thread; further requests wait in a queue whose place the page
shows (past MAX_QUEUE waiting, a request is refused with a busy message). Progress comes from the decoding steps.

Uploads and outputs live in one temporary folder, removed when the server stops (Ctrl-C or SIGTERM): a
generation in progress is stopped at its next decoding step first. A bad upload (empty, not audio, corrupt,
silent, longer than --max-seconds or larger than --max-mb) gets one message and leaves no file behind.
The server binds to 127.0.0.1 unless --host says otherwise; it has no authentication, so do not expose it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import queue
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import librosa
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from plumbing import audio
import codec as codec_lib
from songs import compose
import decode
from plumbing import adding
from plumbing import stem_midi
from songs import synth
from metrics import transcriber
from plumbing.checkpoint import (SHIPPED_CHECKPOINT, CheckpointError, checkpoint_window_seconds, load_model,
                                 trained_classes)
from plumbing.cli import USER_ERROR, pick_device
from decode import Sampling
from plumbing.instruments import INSTRUMENTS, instrument_id

DEFAULT_APP_CHECKPOINT = SHIPPED_CHECKPOINT  # the model shipped in the repository (README "The shipped model")
DEFAULT_PORT = 7860
MAX_SECONDS = 60.0       # longest context accepted (--max-seconds)
MAX_MB = 64.0            # largest upload accepted (--max-mb)
MAX_QUEUE = 4            # generations waiting behind the running one; more are refused with a busy message
MAX_CONTEXTS = 16        # contexts kept (with their takes); the oldest is removed past this
MAX_STEPS = 1024         # per level, per 1000 frames: a bound on what one request may ask for
STOP_WAIT_SECONDS = 10.0  # how long stopping waits for a generation to reach its next decoding step
FRESH_SEEDS = 2 ** 31    # fresh seeds are drawn below this; any seed from 0 to 2^63 - 1 may be typed
EXAMPLE_SECONDS = 8.0
EXAMPLE_SAMPLE_RATE = 32000
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "app.html")
# First bytes of the audio containers soundfile reads: an upload that starts like one but cannot be read is
# called corrupt rather than "not audio".
AUDIO_MAGIC = (b"RIFF", b"RF64", b"fLaC", b"OggS", b"FORM", b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2",
               b".snd", b"caff", b"wvpk")


class UserError(ValueError):
    """A request the user can fix; its message is shown on the page as it is."""


class BusyError(UserError):
    """Too many generations are waiting: the request is refused, not queued."""


class Stopped(Exception):
    """The server is stopping: the generation in progress ends at its next decoding step."""


# ---------------------------------------------------------------------------------------------------------
# Pictures

def spectrogram_png(y: np.ndarray, sample_rate: int, path: str, title: str = "") -> None:
    """A mel spectrogram of mono audio as a small PNG (720 x 150 px), time in seconds across. Levels are in
    dB relative to full scale on one fixed range (-80..0), so pictures of a stem and of its mix compare."""
    y = np.asarray(y, dtype=np.float32)
    mel = librosa.feature.melspectrogram(y=y, sr=sample_rate, n_fft=2048, hop_length=512, n_mels=96)
    db = librosa.power_to_db(mel, ref=(2048 / 4) ** 2, top_db=None)      # a full-scale sine: about 0 dB
    fig = Figure(figsize=(7.2, 1.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.06, 0.24, 0.93, 0.66 if title else 0.72))
    ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=-80, vmax=0,
              extent=(0, len(y) / sample_rate, 0, db.shape[0]))
    ax.set_yticks([])
    ax.set_ylabel("mel", fontsize=7)
    ax.set_xlabel("seconds", fontsize=7, labelpad=1)
    ax.tick_params(labelsize=7, pad=1)
    if title:
        ax.set_title(title, fontsize=8, pad=2)
    fig.savefig(path, format="png")


# ---------------------------------------------------------------------------------------------------------
# Files the page may fetch

class Store:
    """The temporary folder and the files in it the page may fetch, each under a random token: a URL names
    a registered file, never a path."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="stemgen-app-")
        self._files: dict[str, tuple[str, str, str]] = {}  # token -> (path, content type, download name)
        self._lock = threading.Lock()

    def folder(self, prefix: str, parent: str | None = None) -> str:
        """A new folder in the temporary folder, or in `parent` there (os.mkdir, not makedirs: once the store is
        closed this fails, so nothing is written after)."""
        path = os.path.join(parent or self.root, f"{prefix}-{secrets.token_hex(6)}")
        os.mkdir(path)
        return path

    def add(self, path: str, content_type: str, download_name: str | None = None) -> str:
        token = secrets.token_urlsafe(12)
        name = download_name or os.path.basename(path)
        with self._lock:
            self._files[token] = (path, content_type, name)
        return f"/files/{token}/{urllib.parse.quote(name)}"

    def get(self, token: str) -> tuple[str, str, str] | None:
        with self._lock:
            return self._files.get(token)

    def remove_folder(self, folder: str) -> None:
        with self._lock:
            self._files = {t: f for t, f in self._files.items() if not f[0].startswith(folder + os.sep)}
        shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            self._files.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def content_type(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".oga": "audio/ogg",
            ".mp3": "audio/mpeg", ".aiff": "audio/aiff", ".aif": "audio/aiff", ".png": "image/png",
            ".mid": "audio/midi"}.get(ext, "application/octet-stream")


def safe_name(name: str) -> str:
    """A file name from an upload's name: its last part, letters, digits, '.', '-', '_' only, at most 80."""
    base = os.path.basename(str(name).replace("\\", "/")) or "context"
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".") or "context"
    stem, ext = os.path.splitext(base)
    return (stem[:72] or "context") + ext[:8].lower()


# ---------------------------------------------------------------------------------------------------------
# Contexts and generations

@dataclass
class Context:
    id: str
    name: str                 # file name, e.g. song.flac (outputs are named after it, as generate.py does)
    folder: str
    path: str
    x: np.ndarray             # [C, S] float32 at sr
    sr: int
    subtype: str | None
    audio_url: str
    spectrogram_url: str
    tempo: float | None = None
    tempo_known: bool = False

    def describe(self) -> dict:
        return {"id": self.id, "name": self.name, "seconds": round(self.x.shape[1] / self.sr, 3),
                "sample_rate": self.sr, "channels": self.x.shape[0], "audio": self.audio_url,
                "spectrogram": self.spectrogram_url}


@dataclass
class Job:
    id: str
    context: Context
    instruments: list[int]
    sampling: Sampling
    seed: int
    state: str = "queued"     # queued -> running -> done | error
    step: int = 0
    total: int = 0
    error: str = ""
    result: dict | None = None
    stems: list[tuple[str, int]] = field(default_factory=list)   # (stem path, instrument) for the MIDI
    midi: dict = field(default_factory=dict)                     # stem index -> MIDI path, made on request
    started: float = 0.0


class Engine:
    """The model, the contexts, and one worker thread running the queued generations in order."""

    def __init__(self, checkpoint: str, device: str = "auto", codec_weights: str | None = None,
                 max_seconds: float = MAX_SECONDS, max_mb: float = MAX_MB, max_queue: int = MAX_QUEUE):
        if not os.path.isfile(checkpoint):
            hint = (" (the shipped checkpoint is missing from this copy: train one with `python train.py` and pass "
                    "--checkpoint runs/default/best.pt)" if checkpoint == DEFAULT_APP_CHECKPOINT else "")
            raise CheckpointError(f"checkpoint not found: {checkpoint}{hint}")
        self.checkpoint = checkpoint
        self.device = pick_device(device)
        self.net, self.tok, ckpt = load_model(checkpoint, self.device, codec_weights)
        self.trained = trained_classes(ckpt)
        window_seconds = checkpoint_window_seconds(ckpt)
        self.window, self.overlap = decode.window_frames(self.tok.frame_rate, self.net.cfg.max_len, window_seconds)
        d = Sampling()
        steps = tuple(d.steps[:self.net.cfg.n_q]) + (d.steps[-1],) * max(0, self.net.cfg.n_q - len(d.steps))
        self.defaults = replace(d, steps=steps)   # the paper's settings, one step count per level of this model
        self.max_seconds, self.max_bytes, self.max_queue = max_seconds, int(max_mb * 2 ** 20), max_queue
        self.store = Store()
        self.contexts: dict[str, Context] = {}
        self.jobs: dict[str, Job] = {}
        self._order: list[Job] = []             # queued and running jobs, in order
        self._lock = threading.Lock()
        self._midi_lock = threading.Lock()
        self._example_lock, self._example_id = threading.Lock(), ""
        self._queue: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._work, name="stemgen-worker", daemon=True)
        self._worker.start()

    # -- what the page shows -------------------------------------------------------------------------
    def info(self) -> dict:
        names = list(self.trained) if self.trained is not None else list(INSTRUMENTS)
        d = self.defaults
        return {
            "checkpoint": self.checkpoint,
            "instruments": [{"name": n, "targets": (self.trained or {}).get(n)} for n in names],
            "trained_known": self.trained is not None,
            "defaults": {"seed": None, "scale_audio": d.scale_audio, "scale_instrument": d.scale_instrument,
                         "steps": list(d.steps), "temperature": d.temperature},
            "levels": self.net.cfg.n_q, "max_seconds": self.max_seconds, "max_mb": self.max_bytes / 2 ** 20,
            "max_queue": self.max_queue, "device": str(self.device),
        }

    # -- contexts ----------------------------------------------------------------------------------
    def add_upload(self, name: str, body, length: int) -> Context:
        """Read `length` bytes of an uploaded file from `body` (a file object) and keep it as a context."""
        if length <= 0:
            raise UserError("The file is empty: choose an audio file (wav, flac, ogg, mp3, aiff).")
        if length > self.max_bytes:
            raise UserError(f"The file is {length / 2 ** 20:.1f} MB; the limit is {self.max_bytes / 2 ** 20:g} MB "
                            f"(start the page with --max-mb to change it).")
        folder = self.store.folder("context")
        try:
            path = os.path.join(folder, safe_name(name))
            with open(path, "wb") as f:
                left = length
                while left > 0:
                    chunk = body.read(min(left, 1 << 20))
                    if not chunk:
                        raise UserError("The upload stopped before the whole file arrived: try again.")
                    f.write(chunk)
                    left -= len(chunk)
            return self._add_context(folder, path, self.max_seconds)
        except BaseException:
            self.store.remove_folder(folder)
            raise

    def example(self) -> Context:
        """The built-in example context: a short composed song (compose.py, synth.py) without its bass part,
        rendered with the General MIDI SoundFont. The same song every time; made once per server."""
        with self._example_lock:
            with self._lock:
                found = self.contexts.get(self._example_id)
            if found is None:
                found = self._make_example()
                self._example_id = found.id
            return found

    def _make_example(self) -> Context:
        folder = self.store.folder("context")
        try:
            plan, parts = compose.compose(np.random.default_rng(7), EXAMPLE_SECONDS, one_program=True, held_out=True)
            n = int(EXAMPLE_SECONDS * EXAMPLE_SAMPLE_RATE)
            soundfont = synth.SOUNDFONT
            mix = np.zeros(n, np.float32)
            for part in parts:
                if part.inst_class == "Bass":
                    continue                                   # the part the example leaves for you to add
                y = synth.render_part(part.notes, part.program, part.is_drum, n, EXAMPLE_SAMPLE_RATE, soundfont)
                rms = float(np.sqrt(np.mean(y ** 2)))
                if rms > 0:
                    mix += y * (10 ** ((-20.0 + part.gain_db) / 20) / rms)
            mix *= 0.9 / max(float(np.abs(mix).max()), 1e-9)
            path = os.path.join(folder, "example.wav")
            audio.write_audio(path, mix, EXAMPLE_SAMPLE_RATE, subtype="PCM_16")
            return self._add_context(folder, path)
        except BaseException:
            self.store.remove_folder(folder)
            raise

    def _add_context(self, folder: str, path: str, max_seconds: float | None = None) -> Context:
        """Check a context file (readable audio, not longer than max_seconds, not silent) and register it."""
        name = os.path.basename(path)
        try:
            sr, frames, _ = audio.audio_info(path)
        except audio.AudioError:
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
        try:
            x, sr = adding.read_context(path)
        except adding.GenerateError as e:                      # silent
            raise UserError(str(e).replace(path, name)) from None
        except audio.AudioError as e:                            # unreadable samples, NaN or inf
            raise UserError(f"{name} is corrupt: {str(e).replace(path, name)}") from None
        if x.shape[1] < 0.1 * sr:
            raise UserError(f"{name} is too short to add a part to ({x.shape[1] / sr:.2f} s): give at least 0.1 s.")
        subtype = audio.audio_format(path)[1]
        png = os.path.join(folder, "context.png")
        spectrogram_png(audio.to_mono(x), sr, png, f"context: {name}")
        ctx = Context(id=secrets.token_hex(6), name=name, folder=folder, path=path, x=x, sr=sr, subtype=subtype,
                      audio_url=self.store.add(path, content_type(path)),
                      spectrogram_url=self.store.add(png, "image/png"))
        with self._lock:
            self.contexts[ctx.id] = ctx
            busy = {j.context.id for j in self._order}
            old = [c for c in self.contexts.values() if c.id not in busy]
            for c in old[:max(0, len(self.contexts) - MAX_CONTEXTS)]:
                del self.contexts[c.id]
                for jid in [jid for jid, j in self.jobs.items() if j.context.id == c.id]:
                    del self.jobs[jid]            # its takes go with it: their audio, files and memory
                self.store.remove_folder(c.folder)
        return ctx

    # -- generations -------------------------------------------------------------------------------
    def sampling_from(self, options: dict) -> Sampling:
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
            if len(given["steps"]) != self.net.cfg.n_q:
                raise UserError(f"Give {self.net.cfg.n_q} step counts, one per token level (coarsest first).")
            if not all(1 <= s <= MAX_STEPS for s in given["steps"]):
                raise UserError(f"Step counts must be between 1 and {MAX_STEPS}.")
        for key in ("scale_audio", "scale_instrument"):
            if key in given and not 0 <= given[key] <= 100:
                raise UserError("Guidance scales must be between 0 and 100.")
        try:
            return replace(self.defaults, **given)
        except ValueError as e:
            raise UserError(str(e)) from None

    def submit(self, options: dict) -> Job:
        """Queue a generation: {context, instruments: [names], seed?, scale_audio?, ...}."""
        with self._lock:
            ctx = self.contexts.get(str(options.get("context", "")))
        if ctx is None:
            raise UserError("Upload a context (or take the example) first.")
        names = options.get("instruments") or []
        if not isinstance(names, list) or not names:
            raise UserError("Choose at least one instrument.")
        try:
            instruments = [instrument_id(n) for n in names]
        except ValueError as e:
            raise UserError(str(e)) from None
        try:
            adding.check_trained(instruments, self.trained, self.checkpoint)
        except adding.GenerateError as e:
            raise UserError(str(e)) from None
        sampling = self.sampling_from(options)
        seed = options.get("seed")
        if seed in (None, ""):   # a fresh seed, short enough to read off the page and type back
            seed = int(np.random.SeedSequence().entropy % FRESH_SEEDS)
        try:
            seed = int(seed)
            if not 0 <= seed < 2 ** 63:
                raise ValueError
        except (TypeError, ValueError):
            raise UserError("The seed must be a whole number from 0 (or empty for a fresh one).") from None
        job = Job(id=secrets.token_hex(6), context=ctx, instruments=instruments, sampling=sampling, seed=seed)
        with self._lock:
            if self._stopping.is_set():
                raise UserError("The server is stopping.")
            if ctx.id not in self.contexts:       # evicted by an upload since it was looked up
                raise UserError("That context is gone (too many newer uploads): upload it again.")
            waiting = sum(j.state == "queued" for j in self._order)
            if waiting >= self.max_queue:
                raise BusyError(f"Busy: {waiting} generations are already waiting. Try again when one has "
                                f"finished.")
            self.jobs[job.id] = job
            self._order.append(job)
        self._queue.put(job)
        return job

    def status(self, job_id: str) -> dict | None:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            ahead = self._order.index(job) if job in self._order else 0       # generations before this one
        out = {"id": job.id, "state": job.state, "step": job.step, "total": job.total, "ahead": ahead,
               "seed": str(job.seed),   # a string: JavaScript's numbers hold integers exactly only below 2^53
               "instruments": [INSTRUMENTS[i] for i in job.instruments],
               "settings": {"steps": list(job.sampling.steps), "scale_audio": job.sampling.scale_audio,
                            "scale_instrument": job.sampling.scale_instrument,
                            "temperature": job.sampling.temperature}}
        if job.state == "error":
            out["error"] = job.error
        if job.state == "done":
            out["result"] = job.result
        return out

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            job.state, job.started = "running", time.time()
            try:
                self._generate(job)
                job.state = "done"
            except Stopped:
                job.state, job.error = "error", "The server stopped."
            except Exception as e:                               # shown on the page; the server goes on
                job.state, job.error = "error", f"Generation failed: {e}"
                print(f"error: generation {job.id} failed: {e!r}", file=sys.stderr)
            finally:
                with self._lock:
                    if job in self._order:
                        self._order.remove(job)

    def _check_stopping(self) -> None:
        if self._stopping.is_set():
            raise Stopped()

    def _on_step(self, job: Job):
        def step(n: int = 1):
            self._check_stopping()
            job.step += n
        return step

    def _stems(self, job: Job, context: np.ndarray, generator: torch.Generator) -> list[np.ndarray]:
        """adding.generate_stems with a progress callback: stems in turn, each added to the context."""
        return adding.generate_stems(self.net, self.tok, context, job.instruments, job.sampling, self.window,
                                     self.overlap, generator, on_step=self._on_step(job))

    def _generate(self, job: Job) -> None:
        ctx = job.context
        context = audio.resample(audio.to_mono(ctx.x), ctx.sr, self.tok.sample_rate)   # [S'] at the codec rate
        n_frames = math.ceil(context.shape[-1] * self.tok.frame_rate / self.tok.sample_rate)
        plan = decode.plan_windows(n_frames, self.window, self.overlap)
        job.total = decode.planned_steps(job.sampling, plan) * len(job.instruments)
        generator = torch.Generator(device=self.device).manual_seed(job.seed)
        stems = self._stems(job, context, generator)
        stems = [audio.fit_length(audio.resample(s, self.tok.sample_rate, ctx.sr), ctx.x.shape[1]) for s in stems]
        self._check_stopping()                   # stopped during the codec's decoding: write nothing
        folder = self.store.folder("take", ctx.folder)   # removed with its context
        base = os.path.join(folder, ctx.name)
        outs = adding.default_out_paths(base, job.instruments)
        mix_path = adding.default_mix_path(base, job.instruments)
        mix = ctx.x + sum(stems)[None, :]                                            # [C, S]
        adding.write_outputs(list(zip(outs, stems)) + [(mix_path, mix)], ctx.sr, ctx.subtype, False,
                               lambda msg: None)
        result = {"seed": str(job.seed), "seconds": round(time.time() - job.started, 2), "stems": [], "mix": None}
        for k, (path, stem, iid) in enumerate(zip(outs, stems, job.instruments)):
            png = os.path.join(folder, f"stem{k}.png")
            spectrogram_png(stem, ctx.sr, png, f"new {INSTRUMENTS[iid].lower()} (seed {job.seed})")
            name = os.path.basename(path)
            result["stems"].append({"instrument": INSTRUMENTS[iid], "name": name,
                                    "audio": self.store.add(path, content_type(path), name),
                                    "spectrogram": self.store.add(png, "image/png"),
                                    "midi": f"/api/midi/{job.id}/{k}",
                                    "midi_name": os.path.splitext(name)[0] + ".mid"})
            job.stems.append((path, iid))
        png = os.path.join(folder, "mix.png")
        spectrogram_png(audio.to_mono(mix), ctx.sr, png, "new mix")
        result["mix"] = {"name": os.path.basename(mix_path),
                         "audio": self.store.add(mix_path, content_type(mix_path), os.path.basename(mix_path)),
                         "spectrogram": self.store.add(png, "image/png")}
        job.result = result

    def midi(self, job_id: str, index: int) -> tuple[str, str]:
        """(path, download name) of a stem's MIDI file, transcribed on first request (stem_midi)."""
        with self._lock:
            job = self.jobs.get(job_id)
        if job is None or job.state != "done" or not 0 <= index < len(job.stems):
            raise UserError("No such generated stem.")
        path, iid = job.stems[index]
        if not os.path.isfile(path):
            raise UserError("That take is gone (too many newer uploads): generate it again.")
        with self._midi_lock:                     # one transcription at a time; a second request reuses it
            if index not in job.midi:
                ctx = job.context
                if not ctx.tempo_known:
                    ctx.tempo, ctx.tempo_known = stem_midi.detect_tempo(ctx.x, ctx.sr), True
                stem, sr = audio.read_audio(path)
                pm = stem_midi.instrument_midi(stem, sr, iid, ctx.tempo)
                out = os.path.splitext(path)[0] + ".mid"
                stem_midi.write_midi(out, pm)
                job.midi[index] = out
        out = job.midi[index]
        return out, os.path.basename(out)

    # -- stopping ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the worker (a running generation ends at its next step) and remove the temporary folder."""
        self._stopping.set()
        self._worker.join(STOP_WAIT_SECONDS)
        self.store.close()


# ---------------------------------------------------------------------------------------------------------
# HTTP

class Handler(BaseHTTPRequestHandler):
    engine: Engine = None   # set on the subclass make_server builds
    server_version = "StemGen"
    timeout = 60            # seconds a client may stall mid-request

    def log_message(self, format, *args):   # quiet: the terminal shows errors, not every poll
        pass

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _file(self, path: str, ctype: str, name: str | None = None) -> None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return self._error(HTTPStatus.NOT_FOUND, "That file is gone (the server may have restarted).")
        extra = {"Accept-Ranges": "bytes"}
        if name:
            extra["Content-Disposition"] = f"inline; filename*=UTF-8''{urllib.parse.quote(name)}"
        rng = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "") or "")
        if rng and data and (rng.group(1) or rng.group(2)):   # what <audio> asks for to seek
            a, b = rng.groups()
            start = int(a) if a else max(0, len(data) - int(b))
            end = min(len(data) - 1, int(b)) if a and b else len(data) - 1
            if start >= len(data) or start > end:
                return self._send(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b"", ctype,
                                  {"Content-Range": f"bytes */{len(data)}"})
            extra["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(HTTPStatus.PARTIAL_CONTENT, data[start:end + 1], ctype, extra)
        self._send(HTTPStatus.OK, data, ctype, extra)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
        try:
            if not parts or parts == ["index.html"]:
                return self._file(STATIC, "text/html; charset=utf-8")
            if parts == ["api", "info"]:
                return self._json(HTTPStatus.OK, self.engine.info())
            if len(parts) == 3 and parts[:2] == ["api", "jobs"]:
                status = self.engine.status(parts[2])
                if status is None:
                    return self._error(HTTPStatus.NOT_FOUND, "No such generation (the server may have restarted).")
                return self._json(HTTPStatus.OK, status)
            if len(parts) == 4 and parts[:2] == ["api", "midi"] and parts[3].isdigit():
                path, name = self.engine.midi(parts[2], int(parts[3]))
                return self._file(path, "audio/midi", name)
            if len(parts) >= 2 and parts[0] == "files":
                found = self.engine.store.get(parts[1])
                if found is None:
                    return self._error(HTTPStatus.NOT_FOUND, "No such file (the server may have restarted).")
                return self._file(*found)
            return self._error(HTTPStatus.NOT_FOUND, f"Nothing at {url.path}.")
        except UserError as e:
            return self._error(HTTPStatus.BAD_REQUEST, str(e))
        except transcriber.TranscriberUnavailable as e:
            return self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(e))
        except Exception as e:
            print(f"error: GET {url.path}: {e!r}", file=sys.stderr)
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"Server error: {e}")

    def do_POST(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        try:
            if url.path == "/api/upload":
                if length > self.engine.max_bytes:
                    self.close_connection = True                 # the body is not read
                ctx = self.engine.add_upload(query.get("name", ["context"])[0], self.rfile, length)
                return self._json(HTTPStatus.OK, ctx.describe())
            if url.path == "/api/example":
                return self._json(HTTPStatus.OK, self.engine.example().describe())
            if url.path == "/api/generate":
                if not 0 < length <= 65536:
                    raise UserError("A generation request is a small JSON object.")
                try:
                    options = json.loads(self.rfile.read(length))
                except (ValueError, UnicodeDecodeError):
                    raise UserError("A generation request is a small JSON object.") from None
                if not isinstance(options, dict):
                    raise UserError("A generation request is a small JSON object.")
                return self._json(HTTPStatus.OK, self.engine.status(self.engine.submit(options).id))
            return self._error(HTTPStatus.NOT_FOUND, f"Nothing at {url.path}.")
        except BusyError as e:
            return self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(e))
        except UserError as e:
            self.close_connection = True
            return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length > self.engine.max_bytes
                               else HTTPStatus.BAD_REQUEST, str(e))
        except Exception as e:
            print(f"error: POST {url.path}: {e!r}", file=sys.stderr)
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"Server error: {e}")


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> ThreadingHTTPServer:
    """An HTTP server for the engine (port 0: a free port); call serve_forever(), then shutdown()."""
    handler = type("StemGenHandler", (Handler,), {"engine": engine})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def address(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


# ---------------------------------------------------------------------------------------------------------
# Command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="A local web page for StemGen: upload a context, choose instruments, "
                                            "generate, listen, see and download the new stems (audio and MIDI).")
    p.add_argument("--checkpoint", default=DEFAULT_APP_CHECKPOINT, metavar="PATH",
                   help=f"model checkpoint (default: the shipped one, {DEFAULT_APP_CHECKPOINT})")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, this machine only; the page has no login)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT}; 0: any free one)")
    p.add_argument("--max-seconds", type=float, default=MAX_SECONDS,
                   help=f"longest context accepted, in seconds (default: {MAX_SECONDS:g})")
    p.add_argument("--max-mb", type=float, default=MAX_MB,
                   help=f"largest upload accepted, in MB (default: {MAX_MB:g})")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--codec-weights", metavar="PATH",
                   help="where the checkpoint's codec weights are on this machine, when its stored path does not "
                        "exist here (as generate.py --codec-weights)")
    return p


def interrupt(signum, frame):
    """Ctrl-C and SIGTERM stop the server through the same clean-up."""
    raise KeyboardInterrupt()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        engine = Engine(args.checkpoint, args.device, args.codec_weights, args.max_seconds, args.max_mb)
    except (CheckpointError, codec_lib.CodecUnavailable, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return USER_ERROR
    try:
        try:
            server = make_server(engine, args.host, args.port)
        except OSError as e:
            print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror} (try --port 0)", file=sys.stderr)
            return USER_ERROR
        signal.signal(signal.SIGTERM, interrupt)
        signal.signal(signal.SIGINT, interrupt)     # even where it was started with SIGINT ignored (cmd &)
        print(f"StemGen page at {address(server)} (checkpoint {args.checkpoint}; temporary files in "
              f"{engine.store.root}, removed at exit). Ctrl-C stops it.", flush=True)
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            print("stopping", flush=True)
        finally:
            server.server_close()
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
