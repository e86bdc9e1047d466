"""Note transcription for MIRDD's note descriptors (Sec. 3.1): basic-pitch's learned model, run offline.

The paper takes its pitch descriptors from a transcription model [24]. We use basic-pitch's ICASSP 2022 model
(Bittner et al., "A lightweight instrument-agnostic model for polyphonic note transcription and multipitch
estimation"; Apache-2.0): its ONNX file ships inside the `basic-pitch` wheel and runs with onnxruntime on
in-memory audio, windows of many clips batched together; basic-pitch's own note creation turns the model's
note and onset posteriors into notes, with its default thresholds. basic-pitch declares TensorFlow, which
this path does not use, so it is installed with --no-deps (requirements-nodeps.txt). mir.py computes the
descriptors from the notes.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.resources
import logging

import numpy as np

# Facts from basic-pitch 0.4.0's constants.py, inference.py and predict's defaults.
SAMPLE_RATE = 22050  # the model's input rate
NOTE_LOW, NOTE_HIGH = 21, 108  # the model's 88 note bins: MIDI A0..C8
HOP = 256  # model frames are 256 samples apart at SAMPLE_RATE (about 86 per second)
WINDOW = 43844  # samples per model input (2 s less one hop)
FRAMES = 172  # output frames per input window
MARGIN = 15  # frames dropped at each end of a window's output (basic-pitch overlaps windows by 30)
# Windows advance by the frames they keep, a whole number of hops, so that kept frame i is at i * hop / sr
# (basic-pitch advances by WINDOW - 30 hops, 36164 samples, and corrects the drift when it converts frames
# to seconds). The margins, and so the context each kept frame sees, are basic-pitch's.
STEP = (FRAMES - 2 * MARGIN) * HOP
ONSET_THRESHOLD, FRAME_THRESHOLD = 0.5, 0.3  # basic-pitch's defaults
MIN_NOTE_FRAMES = int(round(0.1277 * SAMPLE_RATE / HOP))  # basic-pitch's 127.70 ms: 11 frames
MODEL_INPUT = "serving_default_input_2:0"
NOTE_OUTPUT, ONSET_OUTPUT = "StatefulPartitionedCall:1", "StatefulPartitionedCall:2"  # each [W, frames, 88]
WINDOW_BATCH = 16  # model inputs per onnxruntime call: one at a time costs ~1.4x as much on 2 cores; 8-24 alike
INSTALL_COMMAND = "pip install -r requirements.txt && pip install --no-deps -r requirements-nodeps.txt"


class TranscriberUnavailable(RuntimeError):
    """basic-pitch's model or onnxruntime is not installed; the message says how to install them."""


@contextlib.contextmanager
def _no_logged_warnings():
    """Mute logging warnings for a moment: importing basic_pitch logs one for every backend it does not find
    (TensorFlow, CoreML, TFLite), none of which the ONNX path uses."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


@functools.lru_cache(maxsize=1)
def _model():
    """(onnxruntime session of basic-pitch's model, basic-pitch's note-creation function), loaded once.

    basic-pitch's package probes for TensorFlow, CoreML and TFLite when imported and imports those that are
    installed; none is needed here, and none is in the requirements.
    """
    try:
        import onnxruntime
        with _no_logged_warnings():
            from basic_pitch.note_creation import output_to_notes_polyphonic
        model = importlib.resources.files("basic_pitch") / "saved_models" / "icassp_2022" / "nmp.onnx"
    except ImportError as e:
        raise TranscriberUnavailable(
            f"MIRDD's note descriptors need basic-pitch's transcription model, run with onnxruntime "
            f"({e}). Install it with: {INSTALL_COMMAND}") from None
    if not model.is_file():
        raise TranscriberUnavailable(f"basic-pitch is installed but its ONNX model is missing ({model}); "
                                     f"reinstall with: pip install --no-deps --force-reinstall basic-pitch==0.4.0")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return session, output_to_notes_polyphonic


def check_transcriber() -> None:
    """Raise TranscriberUnavailable now, with the install command, rather than deep inside an evaluation."""
    _model()


def _model_windows(y: np.ndarray) -> np.ndarray:
    """One clip's model inputs [n, WINDOW]: a margin of silence in front, so that the first kept
    frame is at 0 s, then a window every STEP samples, the last one zero-padded."""
    n = max(1, int(np.ceil(y.size / STEP)))
    x = np.zeros((n - 1) * STEP + WINDOW, np.float32)
    front = MARGIN * HOP
    x[front:front + y.size] = y
    return np.lib.stride_tricks.sliding_window_view(x, WINDOW)[::STEP]


def note_activations(clips: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The model's note and onset posteriors for each clip, each [T, 88] (T = frames, MIDI 21-108 across).

    The windows of all clips go through the model together, WINDOW_BATCH at a time.
    """
    session, _ = _model()
    windows = [_model_windows(np.asarray(y, dtype=np.float32)) for y in clips]
    stacked = np.concatenate(windows)[..., None]  # [W, WINDOW, 1]
    outputs = [session.run([NOTE_OUTPUT, ONSET_OUTPUT], {MODEL_INPUT: stacked[i:i + WINDOW_BATCH]})
               for i in range(0, len(stacked), WINDOW_BATCH)]
    note, onset = (np.concatenate([o[k] for o in outputs]) for k in (0, 1))  # [W, FRAMES, 88]
    keep = slice(MARGIN, FRAMES - MARGIN)
    out, start = [], 0
    for y, w in zip(clips, windows):
        frames = int(np.ceil(len(y) / HOP))
        clip = slice(start, start + len(w))
        out.append(tuple(a[clip, keep].reshape(-1, a.shape[-1])[:frames] for a in (note, onset)))
        start += len(w)
    return out


def activations_to_note_events(note: np.ndarray, onset: np.ndarray) -> np.ndarray:
    """basic-pitch's note creation (onset peaks, frames followed while above threshold, then notes found in
    the remaining frame energy) with its default settings: notes [N, 4] (onset s, offset s, MIDI pitch,
    amplitude 0-1: the note posterior's mean over the note, which basic-pitch turns into velocity as 127 x it)."""
    _, output_to_notes_polyphonic = _model()
    with np.errstate(invalid="ignore", divide="ignore"):   # silence: basic-pitch rescales its onsets by 0 / 0
        events = output_to_notes_polyphonic(note, onset, onset_thresh=ONSET_THRESHOLD, frame_thresh=FRAME_THRESHOLD,
                                            min_note_len=MIN_NOTE_FRAMES, infer_onsets=True, max_freq=None,
                                            min_freq=None, melodia_trick=True)
    seconds = HOP / SAMPLE_RATE
    notes = np.array([(a * seconds, b * seconds, p, amp) for a, b, p, amp in events], dtype=np.float64).reshape(-1, 4)
    return notes[np.lexsort((notes[:, 2], notes[:, 0]))]


def activations_to_notes(note: np.ndarray, onset: np.ndarray) -> np.ndarray:
    """activations_to_note_events without the amplitudes: notes [N, 3] (onset s, offset s, MIDI pitch)."""
    return activations_to_note_events(note, onset)[:, :3]


def transcribe_batch(clips: list[np.ndarray]) -> list[np.ndarray]:
    """Notes [N, 3] (onset s, offset s, MIDI pitch in NOTE_LOW..NOTE_HIGH) of each mono clip at SAMPLE_RATE."""
    return [activations_to_notes(note, onset) for note, onset in note_activations(clips)]


def transcribe(y: np.ndarray) -> np.ndarray:
    """Notes [N, 3] (onset s, offset s, MIDI pitch) of one mono clip at SAMPLE_RATE."""
    return transcribe_batch([y])[0]


def transcribe_events(y: np.ndarray) -> np.ndarray:
    """Notes [N, 4] (onset s, offset s, MIDI pitch, amplitude 0-1) of one mono clip at SAMPLE_RATE."""
    note, onset = note_activations([y])[0]
    return activations_to_note_events(note, onset)
