"""What the page (app.py) runs: the model, the contexts and their takes, and one worker thread.

Generation is generate.py's own pipeline (checkpoint.load_model, generate.read_context, generate.generate_stems,
generate.write_outputs, decode.Sampling), run for one request at a time by a single worker thread; further
requests wait in a queue whose place the page shows (past MAX_QUEUE waiting, a request is refused with a busy
message). Progress comes from the decoding steps.

Uploads and outputs live in one temporary folder (page/files.py: Store), removed when the engine closes: a
generation in progress is stopped at its next decoding step first. A bad upload (empty, not audio, corrupt,
silent, longer than max_seconds or larger than max_mb; page/requests.py checks what a request may ask for) gets
one message (UserError) and leaves no file behind.
"""
from __future__ import annotations

import math
import os
import queue
import secrets
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

import decode
import generate  # the one import up a layer: the page adds parts exactly as generate.py does (tests/test_imports.py)
from decode import Sampling
from audio import files as audio_files
from notes import midi
from training.checkpoint import (CheckpointError, checkpoint_window_seconds, load_model, recommended_sampling,
                                 trained_classes)
from cli.common import pick_device
from audio.instruments import INSTRUMENTS, instrument_id
from page.files import Store, content_type, safe_name, spectrogram_png
from page.requests import (MAX_JOB_STEPS, MAX_MB, MAX_SECONDS, BusyError, UserError, check_audio_header,
                           check_upload_length, sampling_from, seed_from)
from metrics import harmony

MAX_QUEUE = 4            # generations waiting behind the running one; more are refused with a busy message
MAX_CONTEXTS = 16        # contexts kept (with their takes); the oldest is removed past this
STOP_WAIT_SECONDS = 10.0  # how long stopping waits for a generation to reach its next decoding step


class Stopped(Exception):
    """The server is stopping, or the take was cancelled: the generation ends at its next decoding step."""


# ---------------------------------------------------------------------------------------------------------
# Contexts and generations

@dataclass
class Context:
    id: str
    name: str                 # file name, e.g. song.flac (outputs are named after it, as generate.py does)
    folder: str
    path: str                 # the file as uploaded: read again, briefly, to write the new mix in its format
    mono: np.ndarray          # [S'] float32 at the codec's rate: all the page keeps in memory of it
    sr: int                   # the file's rate, frames and channels
    frames: int
    channels: int
    subtype: str | None
    audio_url: str
    spectrogram_url: str
    tempo: float | None = None
    tempo_known: bool = False

    def describe(self) -> dict:
        return {"id": self.id, "name": self.name, "seconds": round(self.frames / self.sr, 3),
                "sample_rate": self.sr, "channels": self.channels, "audio": self.audio_url,
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
    cancelled: bool = False
    stems: list[tuple[str, int]] = field(default_factory=list)   # (stem path, instrument) for the MIDI
    midi: dict = field(default_factory=dict)                     # stem index -> MIDI path, made on request
    started: float = 0.0


class Engine:
    """The model, the contexts, and one worker thread running the queued generations in order."""

    def __init__(self, checkpoint: str, device: str = "auto", codec_weights: str | None = None,
                 max_seconds: float = MAX_SECONDS, max_mb: float = MAX_MB, max_queue: int = MAX_QUEUE):
        if not os.path.isfile(checkpoint):
            raise CheckpointError(f"checkpoint not found: {checkpoint}")
        self.checkpoint = checkpoint
        self.device = pick_device(device)
        self.net, self.tok, ckpt = load_model(checkpoint, self.device, codec_weights)
        self.trained = trained_classes(ckpt)
        window_seconds = checkpoint_window_seconds(ckpt)
        self.window, self.overlap = decode.window_frames(self.tok.frame_rate, self.net.cfg.max_len, window_seconds)
        d = Sampling()
        steps = tuple(d.steps[:self.net.cfg.n_q]) + (d.steps[-1],) * max(0, self.net.cfg.n_q - len(d.steps))
        # the paper's settings, one step count per level of this model, with the checkpoint's recommended knobs
        self.recommended = recommended_sampling(ckpt)
        self.defaults = replace(d, steps=steps, **self.recommended)
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
            "recommended": dict(self.recommended),   # the checkpoint's own sampling knobs, in the defaults
            "levels": self.net.cfg.n_q, "max_seconds": self.max_seconds, "max_mb": self.max_bytes / 2 ** 20,
            "max_queue": self.max_queue, "device": str(self.device),
        }

    # -- contexts ----------------------------------------------------------------------------------
    def add_upload(self, name: str, body, length: int) -> Context:
        """Read `length` bytes of an uploaded file from `body` (a file object) and keep it as a context."""
        check_upload_length(length, self.max_bytes)
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
        """The built-in example context, generate.py --example's: a held-out work without its bass. Added once per
        server."""
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
            path = os.path.join(folder, os.path.basename(generate.EXAMPLE))
            shutil.copyfile(generate.EXAMPLE, path)
            return self._add_context(folder, path)
        except BaseException:
            self.store.remove_folder(folder)
            raise

    def _add_context(self, folder: str, path: str, max_seconds: float | None = None) -> Context:
        """Check a context file (readable audio, not longer than max_seconds, not silent) and register it."""
        name = os.path.basename(path)
        sr, frames, channels = check_audio_header(path, name, max_seconds)
        try:
            x, sr = generate.read_context(path)
        except generate.GenerateError as e:                      # silent
            raise UserError(str(e).replace(path, name)) from None
        except audio_files.AudioError as e:                            # unreadable samples, NaN or inf
            raise UserError(f"{name} is corrupt: {str(e).replace(path, name)}") from None
        if x.shape[1] < 0.1 * sr:
            raise UserError(f"{name} is too short to add a part to ({x.shape[1] / sr:.2f} s): give at least 0.1 s.")
        subtype = audio_files.audio_format(path)[1]
        mono = audio_files.resample(audio_files.to_mono(x), sr, self.tok.sample_rate)
        del x                                   # the decoded file is not kept: only its mono copy
        png = os.path.join(folder, f".spectrogram-{secrets.token_hex(4)}.png")   # never an upload's own name
        spectrogram_png(mono, self.tok.sample_rate, png, f"context: {name}")
        ctx = Context(id=secrets.token_hex(6), name=name, folder=folder, path=path, mono=mono, sr=sr,
                      frames=frames, channels=channels, subtype=subtype,
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
        """The defaults with the page's options applied (page/requests.py)."""
        return sampling_from(options, self.defaults, self.net.cfg.n_q)

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
            generate.check_trained(instruments, self.trained, self.checkpoint)
        except generate.GenerateError as e:
            raise UserError(str(e)) from None
        sampling = self.sampling_from(options)
        seed = seed_from(options)
        job = Job(id=secrets.token_hex(6), context=ctx, instruments=instruments, sampling=sampling, seed=seed)
        job.total = self.planned_steps(ctx, sampling, len(instruments))
        if job.total > MAX_JOB_STEPS:
            raise UserError(f"That asks for {job.total} decoding steps; the page takes at most {MAX_JOB_STEPS} per "
                            f"request (fewer steps per level, fewer instruments or a shorter context).")
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

    def planned_steps(self, ctx: Context, sampling: Sampling, n_instruments: int) -> int:
        """Decoding steps a request plans: every window's, every instrument's (what its progress counts)."""
        n_frames = math.ceil(ctx.mono.shape[-1] * self.tok.frame_rate / self.tok.sample_rate)
        return decode.planned_steps(sampling, decode.plan_windows(n_frames, self.window, self.overlap)) * n_instruments

    def cancel(self, job_id: str) -> dict:
        """Stop a take: a queued one never starts, a running one ends at its next decoding step."""
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                raise UserError("No such generation (the server may have restarted).")
            job.cancelled = True
            if job.state == "queued":
                job.state, job.error = "error", "Cancelled."
                if job in self._order:
                    self._order.remove(job)
        return self.status(job_id)

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
            if job.cancelled:
                continue
            job.state, job.started = "running", time.time()
            try:
                self._generate(job)
                job.state = "done"
            except Stopped:
                job.state, job.error = "error", "Cancelled." if job.cancelled else "The server stopped."
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
            if job.cancelled:
                raise Stopped()
            job.step += n
        return step

    def _stems(self, job: Job, context: np.ndarray, generator: torch.Generator) -> list[np.ndarray]:
        """generate.generate_stems with a progress callback: stems in turn, each added to the context."""
        return generate.generate_stems(self.net, self.tok, context, job.instruments, job.sampling, self.window,
                                     self.overlap, generator, on_step=self._on_step(job))

    def _generate(self, job: Job) -> None:
        ctx = job.context
        generator = torch.Generator(device=self.device).manual_seed(job.seed)
        made = self._stems(job, ctx.mono, generator)                               # at the codec's rate
        stems = [audio_files.fit_length(audio_files.resample(s, self.tok.sample_rate, ctx.sr), ctx.frames) for s in made]
        self._check_stopping()                   # stopped during the codec's decoding: write nothing
        folder = self.store.folder("take", ctx.folder)   # removed with its context
        base = os.path.join(folder, ctx.name)
        outs = generate.default_out_paths(base, job.instruments)
        mix_path = generate.default_mix_path(base, job.instruments)
        x, _ = audio_files.read_audio(ctx.path)                                     # [C, S], read for the mix only
        mix = x + sum(stems)[None, :]
        generate.write_outputs(list(zip(outs, stems)) + [(mix_path, mix)], ctx.sr, ctx.subtype, False,
                               lambda msg: None)
        result = {"seed": str(job.seed), "seconds": round(time.time() - job.started, 2), "stems": [], "mix": None}
        del x
        for k, (path, stem, iid) in enumerate(zip(outs, stems, job.instruments)):
            fit = harmony.fit(made[k], ctx.mono + sum(made[:k], np.zeros_like(ctx.mono)), self.tok.sample_rate)
            png = os.path.join(folder, f".stem{k}.png")
            spectrogram_png(stem, ctx.sr, png, f"new {INSTRUMENTS[iid].lower()} (seed {job.seed})")
            name = os.path.basename(path)
            result["stems"].append({"instrument": INSTRUMENTS[iid], "name": name,
                                    "audio": self.store.add(path, content_type(path), name),
                                    "spectrogram": self.store.add(png, "image/png"),
                                    "midi": f"/api/midi/{job.id}/{k}",
                                    "midi_name": os.path.splitext(name)[0] + ".mid",
                                    "notes": f"/api/notes/{job.id}/{k}",
                                    "notes_name": os.path.splitext(name)[0] + ".notes.wav",
                                    "fit": {**fit, "line": harmony.fit_line(INSTRUMENTS[iid].lower(), fit)}})
            job.stems.append((path, iid))
        png = os.path.join(folder, ".mix.png")
        spectrogram_png(audio_files.to_mono(mix), ctx.sr, png, "new mix")
        result["mix"] = {"name": os.path.basename(mix_path),
                         "audio": self.store.add(mix_path, content_type(mix_path), os.path.basename(mix_path)),
                         "spectrogram": self.store.add(png, "image/png")}
        job.result = result

    def midi(self, job_id: str, index: int) -> tuple[str, str]:
        """(path, download name) of a stem's MIDI file, transcribed on first request (notes/midi.py)."""
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
                    ctx.tempo, ctx.tempo_known = midi.detect_tempo(ctx.mono, self.tok.sample_rate), True
                stem, sr = audio_files.read_audio(path)
                pm = midi.instrument_midi(stem, sr, iid, ctx.tempo)
                out = os.path.splitext(path)[0] + ".mid"
                midi.write_midi(out, pm)
                job.midi[index] = out
        out = job.midi[index]
        return out, os.path.basename(out)

    def notes(self, job_id: str, index: int) -> tuple[str, str]:
        """(path, download name) of a stem's transcribed notes played through the SoundFont (a wav at the context's
        rate and length, sample-aligned with it), made from its MIDI on first request."""
        midi_path, _ = self.midi(job_id, index)
        with self._lock:
            job = self.jobs[job_id]
        out = os.path.splitext(midi_path)[0] + ".notes.wav"
        with self._midi_lock:
            if not os.path.isfile(out):
                import pretty_midi
                ctx = job.context
                y = midi.render_notes(pretty_midi.PrettyMIDI(midi_path), ctx.sr, ctx.frames)
                audio_files.write_audio(out, y, ctx.sr, subtype="PCM_16")
        return out, os.path.basename(out)

    # -- stopping ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the worker (a running generation ends at its next step) and remove the temporary folder."""
        self._stopping.set()
        self._worker.join(STOP_WAIT_SECONDS)
        self.store.close()

