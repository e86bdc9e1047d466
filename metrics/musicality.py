"""Music, not noise: what a person would hear in a generated stem, as numbers with references and floors.

The listening report (listening.py) shows that the model uses its context; it does not show that what comes
out sounds like notes. This module measures that, each number beside what bounds it:

- `harmonic_share`: the fraction of a stem's 40-4000 Hz STFT energy that harmonic-percussive separation
  (librosa HPSS, margin 2) calls harmonic. Sustained pitched notes score high, noise low. Its references
  for a codec are the real stems' own score, their codec round trip (`round_trip`, the codec's ceiling) and
  the round trip with every finer level replaced by random tokens (`round_trip_random_fine`, what "right
  coarse tokens, noise above them" sounds like).
- `transposition_score` and `transposition_test`: on a corpus of pieces rendered in several transpositions
  (each track's metadata.yaml has `corpus: {piece: <str>, transpose: <semitones 0..11>}`), does a
  generated part move with its context's key? The score correlates the stem's time-averaged chroma with
  its context's at the right shift minus the mean over the 11 wrong shifts: about 0 for a part that ignores
  the context (exactly 0 averaged over all 12 transpositions of a piece), and the real part is the ceiling.
  Whether the right shift correlates best is counted beside it (chance: 1 context in 12).
- `back_in_key` and `key_consistency`: each part's chroma in every key of a chunk, rolled back into the written
  key, and how alike those are (does the part move with the key?). The pictures of both tests are drawn by
  pictures.py.
"""
from __future__ import annotations

import os
from collections import Counter

import numpy as np
import torch

import data
from metrics import harmony, listening
from metrics.harmony import N_SHIFTS, transposition_score
from audio.files import fit_length, resample
from audio import slakh
from audio.instruments import INSTRUMENTS, instrument_id

HARMONIC_BAND = (40.0, 4000.0)  # Hz: where notes live; below is rumble, above mostly noise and partials
HPSS_MARGIN = 2.0              # librosa HPSS margin: a bin must be twice as harmonic as percussive to count


# ------------------------------------------------------------------------------------ notes or noise


def harmonic_share(wave: np.ndarray, sample_rate: int, n_fft: int = 2048, hop: int = 512,
                   margin: float = HPSS_MARGIN, band: tuple[float, float] = HARMONIC_BAND) -> float:
    """Fraction of a wave's in-band STFT energy that HPSS (with `margin`) assigns to the harmonic part; 0 for silence."""
    import librosa
    x = np.asarray(wave, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"harmonic_share takes a mono wave [S], got shape {x.shape}")
    spec = librosa.stft(x, n_fft=n_fft, hop_length=hop)
    harmonic, _ = librosa.decompose.hpss(spec, margin=margin)
    freqs = librosa.fft_frequencies(sr=sample_rate, n_fft=n_fft)
    inband = (freqs >= band[0]) & (freqs <= band[1])
    total = float(np.sum(np.abs(spec[inband]) ** 2))
    if total <= 1e-12:
        return 0.0
    return float(np.sum(np.abs(harmonic[inband]) ** 2) / total)


def harmonic_shares(populations: dict[str, list[np.ndarray]], songs: list, sample_rate: int, seed: int = 0) -> dict:
    """Per population of waves (one per example, examples labelled by song): the mean harmonic share with a
    song-bootstrap 95 % interval."""
    out = {}
    for name, waves in populations.items():
        if len(waves) != len(songs):
            raise ValueError(f"{name}: {len(waves)} waves for {len(songs)} song labels")
        values = np.array([harmonic_share(w, sample_rate) for w in waves])
        mean, lo, hi = listening.song_bootstrap(values, np.asarray(songs), seed=seed)
        out[name] = {"mean": mean, "lo": lo, "hi": hi}
    return out


@torch.no_grad()
def round_trip(codec, wave: np.ndarray) -> np.ndarray:
    """A mono wave [S] at codec.sample_rate encoded and decoded again, trimmed to S samples."""
    x = torch.as_tensor(np.asarray(wave, dtype=np.float32))[None, None]
    return _decoded(codec, codec.encode(x), x.shape[-1])


def random_fine_tokens(tokens: torch.Tensor, bins: int, generator: torch.Generator) -> torch.Tensor:
    """Tokens [B, Q, T] with level 0 kept and levels 1..Q-1 replaced by uniform random ids in [0, bins)."""
    out = tokens.clone()
    noise = torch.randint(0, bins, tuple(out[:, 1:].shape), generator=generator)
    out[:, 1:] = noise.to(out.device, out.dtype)
    return out


@torch.no_grad()
def round_trip_random_fine(codec, wave: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """A wave's round trip with its finer levels (1..Q-1) replaced by random tokens: the right coarse tokens
    under noise, a floor for what the finer levels add."""
    x = torch.as_tensor(np.asarray(wave, dtype=np.float32))[None, None]
    return _decoded(codec, random_fine_tokens(codec.encode(x), codec.bins, generator), x.shape[-1])


def _decoded(codec, tokens: torch.Tensor, length: int) -> np.ndarray:
    """Decode [1, Q, T] tokens to a float32 numpy wave of exactly `length` samples."""
    return fit_length(codec.decode(tokens)[0, 0].float().cpu().numpy(), length).astype(np.float32)


# ----------------------------------------------------------------------------------------- transposition


def corpus_entry(track: slakh.Track) -> tuple[str, int, str]:
    """(piece, transpose, chunk) from a track's metadata.yaml `corpus:` entry (slakh.Track.corpus); ValueError
    saying what is missing.

    The chunk names one stretch of music whatever its key: the entry's source file and start (songs/corpus.py writes
    both), else the piece."""
    path, entry = os.path.join(track.path, "metadata.yaml"), track.corpus
    if "piece" not in entry or "transpose" not in entry:
        raise ValueError(f"{path} has no `corpus: {{piece: ..., transpose: ...}}` entry; the transposition test "
                         "needs a folder of transposed renderings of pieces (e.g. made by python -m songs.corpus)")
    transpose = entry["transpose"]
    if isinstance(transpose, bool) or not isinstance(transpose, int) or not 0 <= transpose < N_SHIFTS:
        raise ValueError(f"{path}: corpus.transpose must be a whole number of semitones in 0..11, got {transpose!r}")
    chunk = f"{entry.get('source', entry['piece'])}@{entry.get('start_seconds', 0.0)}"
    return str(entry["piece"]), transpose, chunk


def sounding_frames(part: np.ndarray, context: np.ndarray, sample_rate: int, seconds: float,
                    hop_seconds: float = 1.0, silence_db: float = data.DEFAULT_SILENCE_DB,
                    frame_seconds: float = 0.1) -> dict[float, int]:
    """For each start (a multiple of hop_seconds) of a `seconds` window where the part and the context both pass
    the crop rule (RMS over the window at least silence_db, dBFS): how many `frame_seconds` frames of the part
    sound in it (RMS at least silence_db). Empty when no window passes (a song shorter than the window: start 0
    only)."""
    n, hop = int(round(seconds * sample_rate)), max(1, int(round(hop_seconds * sample_rate)))
    f = max(1, int(round(frame_seconds * sample_rate)))
    frames = part[:len(part) // f * f].astype(np.float64).reshape(-1, f)
    sounding = 20.0 * np.log10(np.sqrt(np.mean(frames ** 2, axis=1)) + 1e-30) >= silence_db
    return {start / sample_rate: int(sounding[start // f:(start + n) // f].sum())
            for start in range(0, max(len(part) - n, 0) + 1, hop)
            if min(data.rms_db(part[start:start + n]), data.rms_db(context[start:start + n])) >= silence_db}


def sounding_start(heard: list[dict[float, int]]) -> float | None:
    """The one start for renderings of the same music (sounding_frames of each): among the starts that pass in
    every rendering, the one where the part sounds longest in all of them together, the earliest of equals;
    None when no start passes in all.

    The first window that passes is not enough: a voice that enters late (a mass's bass after the upper voices'
    imitative entries) passes the rule in the window where it plays its first second, and the test then hears
    a second of it in five. One start for every key keeps the renderings of a chunk the same music.
    """
    common = set.intersection(*(set(h) for h in heard)) if heard else set()
    return min(common, key=lambda start: (-sum(h[start] for h in heard), start)) if common else None


def transposition_examples(data_root: str, instrument: str, sample_rate: int, seconds: float, split: str = "all",
                           search_seconds: float = 60.0) -> tuple[list[dict], Counter]:
    """Each track with a stem of the class: its first stem of that class (the real part) and the sum of all its
    other stems (the context), cropped to the window where the part sounds longest (sounding_start, one start
    for every key of a chunk); and a Counter of skipped tracks.

    Each example: {"track", "piece", "transpose", "chunk", "start" (seconds), "context" [S], "real" [S]} at
    sample_rate.
    """
    k = instrument_id(instrument)
    tracks, _ = slakh.scan_tracks(data_root, split)
    read, skipped = [], Counter()
    for track in tracks:
        part = next((s for s in track.stems if s.instrument == k), None)
        if part is None:
            skipped[f"no {INSTRUMENTS[k]} stem"] += 1
            continue
        piece, transpose, chunk = corpus_entry(track)
        span = min(track.seconds, search_seconds)
        waves = {s.name: fit_length(resample(data.read_crop(s, 0.0, span), s.sample_rate, sample_rate),
                                    int(round(span * sample_rate))) for s in track.stems}
        real = waves.pop(part.name)
        context = np.sum(list(waves.values()), axis=0)
        read.append({"track": track.name, "piece": piece, "transpose": transpose, "chunk": chunk, "real": real,
                     "context": context, "heard": sounding_frames(real, context, sample_rate, seconds)})
    by_chunk: dict[str, list[dict]] = {}
    for r in read:
        by_chunk.setdefault(r["chunk"], []).append(r)
    starts = {chunk: sounding_start([r["heard"] for r in rs]) for chunk, rs in by_chunk.items()}
    n = int(round(seconds * sample_rate))
    examples = []
    for r in read:
        start = starts[r["chunk"]]
        if start is None:   # no window common to every key: this rendering's own, or none
            own = sounding_start([r["heard"]])
            if own is None:
                skipped["part and context never sound together"] += 1
                continue
            start = own
        a = int(round(start * sample_rate))
        examples.append({"track": r["track"], "piece": r["piece"], "transpose": r["transpose"], "chunk": r["chunk"],
                         "start": start, "context": fit_length(r["context"][a:a + n], n).astype(np.float32),
                         "real": fit_length(r["real"][a:a + n], n).astype(np.float32)})
    return examples, skipped


def mean_chroma(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """[12] time-averaged chroma of a mono wave (listening.chroma)."""
    return listening.chroma(wave, sample_rate).mean(axis=1)


def score_summary(scores: list[float], best: list[bool], pieces: list[str], seed: int = 0) -> dict:
    """Mean transposition score with a piece-bootstrap 95 % interval, and how often the right shift is best."""
    mean, lo, hi = listening.song_bootstrap(np.asarray(scores), np.asarray(pieces), seed=seed)
    return {"mean": mean, "lo": lo, "hi": hi, "right_shift_best": int(sum(best)), "n": len(scores)}


def transposition_test(data_root: str, instrument: str, generate, sample_rate: int, seconds: float,
                       split: str = "all", seed: int = 0, codec=None, examples=None) -> dict:
    """Does a generated part move with its context's key? Transposition scores of generated and real parts.

    Args:
        data_root: a Slakh-layout folder whose tracks carry `corpus: {piece, transpose}` in metadata.yaml.
        instrument: the class to generate (a name instruments.instrument_id knows, e.g. "bass").
        generate: (contexts: list of [S] waves, instruments: list of class ids) -> list of [S] stems.
        seconds: crop length; sample_rate: the rate `generate` takes and returns.
        codec: when given (at sample_rate), two references more: the real part through the codec ("round
            trip"), and with its finer levels random ("random finer levels": what level 0 alone keeps of the
            key, the most a model that gets level 0 right but not the rest could score).
        examples: transposition_examples(data_root, instrument, sample_rate, seconds, split), when the caller
            has read them already (evaluate.py shares them with key_nll_test); read here when None.
    Returns:
        {"instrument", "n", "pieces", "transpositions", "skipped", "generated": summary, "real": summary,
        ["round trip": summary, "random finer levels": summary,] "examples": [per track: its piece, chunk and
        transposition, each part's score and time-averaged chroma, the context's chroma]}; each summary is
        score_summary's (piece-bootstrap intervals). plot_transposition draws the examples.
    """
    examples, skipped = examples or transposition_examples(data_root, instrument, sample_rate, seconds, split)
    if not examples:
        raise ValueError(f"{data_root} [{split}]: no track with a {instrument} stem to test "
                         f"({dict(skipped) or 'no tracks'})")
    stems = generate([e["context"] for e in examples], [instrument_id(instrument)] * len(examples))
    if len(stems) != len(examples):
        raise ValueError(f"generate returned {len(stems)} stems for {len(examples)} contexts")
    g = torch.Generator().manual_seed(seed)
    rows = []
    for e, stem in zip(examples, stems):
        parts = {"generated": fit_length(np.asarray(stem, np.float32), len(e["context"])), "real": e["real"]}
        if codec is not None:
            parts["round trip"] = round_trip(codec, e["real"])
            parts["random finer levels"] = round_trip_random_fine(codec, e["real"], g)
        ctx = mean_chroma(e["context"], sample_rate)
        row = {"track": e["track"], "piece": e["piece"], "transpose": e["transpose"], "chunk": e.get("chunk"),
               "context_chroma": [round(float(v), 5) for v in ctx]}
        for who, wave in parts.items():
            stem = mean_chroma(wave, sample_rate)
            row[who], row[f"{who}_right_shift_best"] = transposition_score(stem, ctx)
            row[f"{who}_chroma"] = [round(float(v), 5) for v in stem]
            row[f"{who}_harmony"] = harmony.fit(wave, e["context"], sample_rate)   # key, chords in time, movement
        rows.append(row)
    pieces = [r["piece"] for r in rows]
    whos = ["generated", "real"] + (["round trip", "random finer levels"] if codec is not None else [])
    return {"instrument": INSTRUMENTS[instrument_id(instrument)], "n": len(rows), "pieces": len(set(pieces)),
            "transpositions": len({(r["piece"], r["transpose"]) for r in rows}), "skipped": dict(skipped),
            **{who: {**score_summary([r[who] for r in rows], [r[f"{who}_right_shift_best"] for r in rows], pieces,
                                     seed), "consistency": key_consistency(rows, who, seed),
                     "harmony": harmony_summary([r[f"{who}_harmony"] for r in rows], pieces, seed)}
               for who in whos},
            "examples": rows}


def harmony_summary(fits: list[dict], pieces: list[str], seed: int = 0) -> dict:
    """{measure: {"mean", "lo", "hi", "n"}} of harmony.fit's measures over parts, piece-bootstrap intervals; the
    parts where a measure cannot tell (None: silent, too short) are left out of it."""
    out = {}
    for name in ("key", "chords", "movement"):
        kept = [(f[name], p) for f, p in zip(fits, pieces) if f[name] is not None]
        if not kept:
            out[name] = None
            continue
        mean, lo, hi = listening.song_bootstrap(np.array([v for v, _ in kept]), np.array([p for _, p in kept]),
                                                seed=seed)
        out[name] = {"mean": mean, "lo": lo, "hi": hi, "n": len(kept)}
    return out


def key_consistency(rows: list[dict], who: str, seed: int = 0) -> dict | None:
    """Does the part move with the key, whatever it plays? For each chunk heard in two keys or more, the mean
    Pearson correlation between two keys' chroma of `who` rolled back into the written key (back_in_key);
    the mean over chunks with a piece-bootstrap interval, {"mean", "lo", "hi", "chunks"}; None without such a
    chunk. 1: the part moves exactly with the key (the real part, nearly); -1/11: it keeps one chroma whatever
    the key (its 12 rolled copies' correlations sum to 0); about 0: what it plays has nothing to do with the
    key. Unlike the score, it does not ask the part's chroma to resemble the context's, only to move with it.
    """
    values, pieces = [], []
    for chunk in sorted({r["chunk"] for r in rows if r.get("chunk") is not None}):
        _, grid = back_in_key(rows, who, chunk)
        if len(grid) < 2:
            continue
        z = grid - grid.mean(axis=1, keepdims=True)
        norm = np.sqrt((z ** 2).sum(axis=1))
        z = np.where(norm[:, None] > 1e-12, z / np.maximum(norm[:, None], 1e-12), 0.0)  # a flat chroma: 0
        corr = z @ z.T
        values.append(float(corr[~np.eye(len(grid), dtype=bool)].mean()))
        pieces.append(next(r["piece"] for r in rows if r.get("chunk") == chunk))
    if not values:
        return None
    mean, lo, hi = listening.song_bootstrap(np.asarray(values), np.asarray(pieces), seed=seed)
    return {"mean": mean, "lo": lo, "hi": hi, "chunks": len(values)}


def back_in_key(rows: list[dict], who: str, chunk: str) -> tuple[list[int], np.ndarray]:
    """One chunk's renderings in several keys, each `who` chroma ("context", "real", "generated", ...) rolled back
    by its transposition into the chunk's written key: (transpositions, [K, 12] rows scaled to a peak of 1).

    A part that follows its context's key keeps its pitch classes in the written key whatever the transposition:
    the rows line up. A part that ignores the key keeps its pitch classes where they are, so rolled back they
    move one semitone per key: the rows form diagonals. `rows` are transposition_test's "examples".
    """
    mine = sorted((r for r in rows if r.get("chunk") == chunk), key=lambda r: r["transpose"])
    if not mine:
        raise ValueError(f"no example of chunk {chunk!r}")
    if f"{who}_chroma" not in mine[0]:
        raise ValueError(f"the examples carry no {who!r} chroma (have: "
                         f"{', '.join(k[:-7] for k in mine[0] if k.endswith('_chroma'))})")
    out = np.stack([np.roll(np.asarray(r[f"{who}_chroma"], dtype=np.float64), -int(r["transpose"])) for r in mine])
    return [int(r["transpose"]) for r in mine], out / np.maximum(out.max(axis=1, keepdims=True), 1e-12)


def key_nll_matrix(model, contexts: torch.Tensor, targets: torch.Tensor, instrument: int,
                   batch: int = 32) -> np.ndarray:
    """[K, K] level-0 NLL (whole target masked, listening.level0_nll) of target i under context j, for the K
    renderings of one chunk in K keys (tokens [K, Q, T] each, in the same key order)."""
    K = contexts.shape[0]
    if targets.shape[0] != K:
        raise ValueError(f"{K} contexts but {targets.shape[0]} targets")
    out = np.zeros((K, K))
    inst = torch.full((K,), int(instrument), dtype=torch.long)
    for j in range(K):
        nll, _ = listening.level0_nll(model, contexts[j:j + 1].expand(K, -1, -1), targets, inst, batch=batch)
        out[:, j] = nll.numpy()
    return out


def key_nll_scores(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per target (row): the mean NLL under the other keys' contexts minus under its own (the diagonal), in nats,
    and how many other keys' contexts score strictly lower than its own (0: its own is best; a model that
    ignores the context scores gains of exactly 0 and ranks of 0 by ties)."""
    m = np.asarray(matrix, dtype=np.float64)
    own = np.diag(m)
    others = m[~np.eye(len(m), dtype=bool)].reshape(len(m), len(m) - 1)
    return others.mean(1) - own, (others < own[:, None]).sum(1)


def key_nll_test(model, codec, data_root: str, instrument: str, seconds: float, split: str = "all",
                 seed: int = 0, examples=None) -> dict:
    """The transposition test in tokens, without sampling: does the model expect the real part in its context's
    key? For every chunk rendered in all twelve keys, the real part's level-0 tokens are scored under each key's
    context; the gain is the mean NLL under the 11 wrong keys' contexts minus under the right one.

    About 0 for a model that ignores the key; it needs no decoding, so it runs in seconds, and it shows
    what the model knows before sampling decides what is heard. Chunks not found in all twelve keys are
    skipped (counted). Returns {"instrument", "n", "pieces", "chunks", "skipped", "gain": {mean, lo, hi} (piece
    bootstrap), "own_best", "mean_rank", "chance_rank"}. `examples`: as transposition_test's, read at the
    codec's rate.
    """
    examples, skipped = examples or transposition_examples(data_root, instrument, codec.sample_rate, seconds, split)
    skipped = Counter(skipped)  # counted on below; the caller's Counter stays as it was
    chunks: dict[str, dict[int, dict]] = {}
    for e in examples:
        chunks.setdefault(e["chunk"], {})[e["transpose"]] = e
    gains, ranks, pieces = [], [], []
    k = instrument_id(instrument)
    for chunk, by_key in chunks.items():
        if len(by_key) < N_SHIFTS:
            skipped["chunk not in all twelve keys"] += len(by_key)
            continue
        rows = [by_key[t] for t in range(N_SHIFTS)]
        if len({r.get("start") for r in rows}) > 1:
            skipped["chunk cropped at different starts in different keys"] += len(rows)
            continue
        encode = lambda key: codec.encode(torch.from_numpy(np.stack([r[key] for r in rows]))[:, None, :])
        gain, rank = key_nll_scores(key_nll_matrix(model, encode("context"), encode("real"), k))
        gains += gain.tolist()
        ranks += rank.tolist()
        pieces += [r["piece"] for r in rows]
    if not gains:
        raise ValueError(f"{data_root} [{split}]: no chunk with a {instrument} stem in all twelve keys "
                         f"({dict(skipped) or 'no tracks'}); make one with python -m songs.corpus --transpositions all")
    mean, lo, hi = listening.song_bootstrap(np.asarray(gains), np.asarray(pieces), seed=seed)
    return {"instrument": INSTRUMENTS[k], "n": len(gains), "pieces": len(set(pieces)),
            "chunks": len(gains) // N_SHIFTS, "skipped": dict(skipped), "gain": {"mean": mean, "lo": lo, "hi": hi},
            "own_best": int(sum(r == 0 for r in ranks)), "mean_rank": float(np.mean(ranks)),
            "chance_rank": (N_SHIFTS - 1) / 2}
