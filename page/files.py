"""The files the page (app.py) may fetch: a temporary folder whose files are registered under random tokens
(Store), the upload's safe file name, content types, and the spectrogram pictures of contexts and takes."""
from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import threading
import urllib.parse

import librosa
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


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
