"""evaluate.py's protocol and sweeps (Sec. 3.2, Tab. 1-3): examples, generation, the scores of one sampling
setting with song-bootstrap intervals, group means, and the partial file a stopped sweep resumes from.

Every row (one sampling setting) holds, beside FAD and MIRDD:
- harmonic share: the mean over generated stems of musicality.harmonic_share (notes rather than noise);
- alignment: per example, the chroma key agreement (listening.chroma_agreement's second number) of the
  generated stem with its own context-mix minus with another song's context-mix (listening.other_song_order,
  a fixed choice: half-way round the list of examples, then onwards, to the first of another song), averaged.
  About 0 for a stem that ignores its context; positive when it shares its context's pitch content.
Each comes with a 95 % interval from resampling songs with replacement (the songs the examples came from; an
example counts with its song): the same B resamples for every measure and every row, so a group's interval
is the percentile interval of its rows' mean over the resamples. FAD and MIRDD are recomputed on each
resample from per-song sufficient statistics (fad.song_moments, mir.song_histograms). Two rows whose
intervals overlap cannot be told apart at this number of songs (`compare`).
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, replace

import numpy as np
import torch
from tqdm import tqdm

import data
import decode
from metrics import fad, listening, mir, musicality
from audio import files as audio_files

MEASURES = ("fad", "mirdd", "harmonic_share", "alignment")
MEASURE_NAMES = {"fad": "FAD", "mirdd": "MIRDD", "harmonic_share": "harmonic share", "alignment": "alignment"}
N_BOOT = 1000        # song resamples for the intervals (evaluate.py --n-boot)
LEVEL = 0.95
PROTOCOL_BATCH = 1   # the protocol's examples one at a time: each is seeded with (seed, its index)
TIE = "cannot be told apart at this size"


class EvaluateError(RuntimeError):
    """A problem the user can fix (bad flag, missing weights, existing output); one line, no traceback."""


# ---------------------------------------------------------------------------------------------------------
# Examples and generation

def draw_examples_and_songs(data_root: str, split: str, n: int, seconds: float, sample_rate: int, seed: int):
    """draw_examples and, for each example, the song its pair was cut from: its track's work when the metadata
    names one (slakh.Track.work: every key and chunk of a corpus piece is one song, as in data.segment_song),
    else its track's folder relative to data_root (e.g. test/Track01877)."""
    try:
        ds = data.StemPairDataset(data_root, split, data.PairDraw(sample_rate, seconds), seed=seed, length=n,
                                  verbose=False, target_keys=True)
        song_of = {os.path.abspath(s.path): t.work or os.path.relpath(t.path, data_root)
                   for t in ds.tracks for s in t.stems}
        items = [ds[i] for i in range(n)]
    except data.DatasetError as e:
        raise EvaluateError(f"--data {data_root} --split {split}: {e}") from None
    examples = [(c.numpy(), t.numpy(), int(k)) for c, t, k, _ in items]
    return examples, [song_of[key.rsplit("|", 7)[0]] for _, _, _, key in items]  # the key starts with the path


def draw_examples(data_root: str, split: str, n: int, seconds: float, sample_rate: int, seed: int):
    """N (context-mix [S], real target stem [S], instrument id) examples from a held-out split, as training pairs."""
    return draw_examples_and_songs(data_root, split, n, seconds, sample_rate, seed)[0]


def generate_stems(net, tok, contexts: list[np.ndarray], instruments: list[int], sampling, seed: int,
                   window_seconds: float | None = None, batch: int = PROTOCOL_BATCH, progress: bool = False,
                   desc: str = "generate", on_examples=None) -> list[np.ndarray]:
    """The model's stem for every equal-length context, `batch` examples decoded together
    (decode.generate_stem_batch). The one seeding rule: the batch that starts at example j is seeded with
    (seed, j), whatever the sampling, so that every setting of a sweep sees the same seeds; with batch 1,
    example i is seeded with (seed, i). on_examples(k) is called after each batch of k examples."""
    device = next(net.parameters()).device
    window, overlap = decode.window_frames(tok.frame_rate, net.cfg.max_len, window_seconds)
    plan = decode.plan_windows(math.ceil(len(contexts[0]) * tok.frame_rate / tok.sample_rate), window, overlap)
    out = []
    with tqdm(total=len(contexts) * decode.planned_steps(sampling, plan), desc=desc, unit="step",
              disable=not progress, leave=False) as bar:
        for j in range(0, len(contexts), batch):
            g = torch.Generator(device=device).manual_seed(int(np.random.SeedSequence([seed, j]).generate_state(1)[0]))
            b = len(contexts[j:j + batch])
            out += list(decode.generate_stem_batch(net, tok, np.stack(contexts[j:j + batch]),
                                                   [int(k) for k in instruments[j:j + batch]], sampling, window,
                                                   overlap, g, lambda n: bar.update(n * b)))
            if on_examples is not None:
                on_examples(b)
    return out


# ---------------------------------------------------------------------------------------------------------
# Song resamples and intervals

def interval(draws, level: float = LEVEL) -> list[float] | None:
    """The percentile interval of a statistic over the resamples; None without any finite value."""
    d = np.asarray(draws, dtype=np.float64)
    if d.size == 0 or not np.isfinite(d).any():
        return None
    lo, hi = np.nanquantile(d, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def compare(a: dict, b: dict, measure: str) -> str | None:
    """Whether two rows (or groups) differ in `measure` beyond their intervals: TIE when the intervals overlap,
    "higher" / "lower" (b against a) when they do not; None when either has no interval."""
    ia, ib = (r.get("intervals", {}).get(measure) for r in (a, b))
    if ia is None or ib is None:
        return None
    if ib[0] <= ia[1] and ia[0] <= ib[1]:
        return TIE
    return "higher" if ib[0] > ia[1] else "lower"


def verdict(baseline: dict, other: dict) -> str:
    """One line for the table: each measure's compare() of `other` against `baseline`."""
    found = {m: compare(baseline, other, m) for m in MEASURES if m in other}
    tied = [MEASURE_NAMES[m] for m, v in found.items() if v == TIE]
    parts = [f"{MEASURE_NAMES[m]} {v}" for m, v in found.items() if v not in (TIE, None)]
    parts += [", ".join(tied) + f": {TIE}"] if tied else []
    missing = [MEASURE_NAMES[m] for m, v in found.items() if v is None]
    parts += [", ".join(missing) + ": no interval"] if missing else []
    return "; ".join(parts)


def alignment_values(stems: list[np.ndarray], context_chromas: list[np.ndarray], other, sample_rate: int):
    """Per example: key agreement of the stem's chroma with its own context's minus with context other[i]'s."""
    out = []
    for i, stem in enumerate(stems):
        c = listening.chroma(stem, sample_rate)
        out.append(listening.chroma_agreement(c, context_chromas[i])[1]
                   - listening.chroma_agreement(c, context_chromas[int(other[i])])[1])
    return np.array(out)


def key_alignment(stems, contexts, songs, sample_rate: int) -> np.ndarray:
    """alignment_values with the contexts' chromas and the other-song order computed here."""
    other, _ = listening.other_song_order(songs)
    return alignment_values(stems, [listening.chroma(c, sample_rate) for c in contexts], other, sample_rate)


# ---------------------------------------------------------------------------------------------------------
# The real side, analysed once, and the scores of one setting

class Reference:
    """The real side of the protocol, analysed once: FAD embeddings of the real stems, MIR descriptors of the
    real stems summed with their context-mixes, the contexts' chromas, and the song resamples."""

    def __init__(self, examples, sample_rate: int, embedding, progress: bool = False, songs=None,
                 n_boot: int = N_BOOT, seed: int = 0):
        self.examples, self.sample_rate, self.embedding = examples, sample_rate, embedding
        per_clip = fad.embed_clips(embedding, [t for _, t, _ in examples], sample_rate, progress, "embed real")
        self.emb = fad.pool_clips(per_clip, embedding.framing, "embed real")
        self.gaussian = fad.gaussian_fit(self.emb, "real stems")
        self.desc = mir.describe_population([c + t for c, t, _ in examples], sample_rate, progress, "mir real")
        self.songs = songs
        self.intervals = songs is not None and len(set(songs)) >= 2   # one song: no resamples, no other song
        if self.intervals:
            self.song_index, self.draws = listening.song_draws(songs, n_boot, seed)
            self.moments = fad.song_moments(per_clip, self.song_index, self.draws.shape[1])
            self.hist = mir.song_histograms(self.desc, self.song_index, self.draws.shape[1])
            self.other, _ = listening.other_song_order(songs)
            self.context_chromas = [listening.chroma(c, sample_rate) for c, _, _ in examples]

    def score(self, stems: list[np.ndarray], alpha: float = 1.0, progress: bool = False) -> dict:
        """FAD (isolated stems) and MIRDD (stems + context-mix) of generated stems against the real ones; with
        songs, the harmonic share and the alignment (module docstring), and every measure's interval with its
        resampled values ("draws", dropped from the final result)."""
        per_clip = fad.embed_clips(self.embedding, stems, self.sample_rate, progress, "embed generated")
        emb = fad.pool_clips(per_clip, self.embedding.framing, "embed generated")
        desc = mir.describe_population([c + s for (c, _, _), s in zip(self.examples, stems)], self.sample_rate,
                                       progress, "mir generated")
        total, per = mir.mirdd(self.desc, desc, alpha)
        fd = fad.frechet_distance(*self.gaussian, *fad.gaussian_fit(emb, "generated stems"))
        row = {"fad": fd, "mirdd": total, "mirdd_per_descriptor": per}
        if self.songs is None:
            return row
        shares = np.array([musicality.harmonic_share(s, self.sample_rate) for s in stems])
        row.update({"harmonic_share": float(shares.mean()), "alignment": None,
                    "intervals": dict.fromkeys(MEASURES)})
        if not self.intervals:
            return row
        aligned = alignment_values(stems, self.context_chromas, self.other, self.sample_rate)
        n_songs = self.draws.shape[1]
        draws = {"fad": fad.bootstrap_frechet(self.moments, fad.song_moments(per_clip, self.song_index, n_songs),
                                              self.draws),
                 "mirdd": mir.bootstrap_mirdd(self.hist, mir.song_histograms(desc, self.song_index, n_songs),
                                              self.draws, alpha),
                 "harmonic_share": listening.mean_draws(shares, self.song_index, self.draws),
                 "alignment": listening.mean_draws(aligned, self.song_index, self.draws)}
        row["alignment"] = float(aligned.mean())
        row["intervals"] = {m: interval(d) for m, d in draws.items()}
        row["draws"] = {m: [float(x) for x in d] for m, d in draws.items()}
        return row


# ---------------------------------------------------------------------------------------------------------
# Sweeps (Tab. 1-3)

def sweep_settings(kind: str, base, scales=(2.0, 3.0, 4.0), ws_values=(0.0, 0.1, 0.2, 0.5)):
    """The sampling settings of one table: a list of (group, label, Sampling).

    guidance (Tab. 1): lambda = 1.0 means no guidance for that source (Sec. 3.2.1), so (1, 1) is the plain
    one-pass sampling with both sources; the other three groups take every value of `scales` for the guided
    source(s) and are averaged per group, as the paper averages over values up to 4.0.
    causal-bias (Tab. 2): w_s over `ws_values` with w_c = 0.1 and w_r = 1.0.
    best-vs-naive (Tab. 3): the paper's best setting and the naive one (no guidance, no causal bias).
    """
    if kind == "none":
        return [("best", "best", base)]
    if kind == "guidance":
        out = [("lambda_i = lambda_a = 1.0", "li=1 la=1", replace(base, guidance="none"))]
        groups = [("lambda_i > 1.0, lambda_a = 1.0", [(s, 1.0) for s in scales]),
                  ("lambda_i = 1.0, lambda_a > 1.0", [(1.0, s) for s in scales]),
                  ("lambda_i > 1.0, lambda_a > 1.0", [(si, sa) for si in scales for sa in scales])]
        for group, cells in groups:
            out += [(group, f"li={si:g} la={sa:g}", replace(base, guidance="multi", scale_instrument=si,
                                                              scale_audio=sa)) for si, sa in cells]
        return out
    if kind == "causal-bias":
        return [(f"w_s = {w:g}", f"w_s={w:g}", replace(base, w_s=w, w_c=0.1, w_r=1.0)) for w in ws_values]
    if kind == "best-vs-naive":
        naive = decode.Sampling.naive(steps=base.steps, temperature=base.temperature,
                                      fine_temperature=base.fine_temperature)
        return [("naive", "naive", naive), ("best", "best", base)]
    raise EvaluateError(f"unknown sweep {kind!r}: use none, guidance, causal-bias or best-vs-naive")


def group_rows(rows: list[dict]) -> list[dict]:
    """Average each measure over the rows of each group (in first-appearance order); with the rows' resampled
    values, each group mean's interval over the same resamples."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    out = []
    for g, rs in groups.items():
        row = {"group": g, "n_settings": len(rs)}
        for m in MEASURES:
            if all(m in r for r in rs):
                values = [r[m] for r in rs]
                row[m] = None if None in values else float(np.mean(values))
        if any("intervals" in r for r in rs):
            row["intervals"] = {m: interval(np.mean([r["draws"][m] for r in rs], axis=0))
                                if all(m in r.get("draws", {}) for r in rs) else None for m in MEASURES}
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------------------
# Resuming: the partial file

def write_text_atomic(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    audio_files.atomic_write(path, write, overwrite=True)


def partial_path(json_path: str) -> str:
    """Where a run keeps its finished rows until the last one: beside the result, OUT/<name>.partial.json."""
    return os.path.splitext(json_path)[0] + ".partial.json"


def plain(value):
    """A value as JSON gives it back (tuples as lists), so that a saved identity compares equal to a new one."""
    return json.loads(json.dumps(value))


def differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """What differs between two identities, one short phrase per key (long lists summarised)."""
    out = []
    for k in sorted(set(saved) | set(now), key=str):
        a, b = saved.get(k), now.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif isinstance(a, list) and isinstance(b, list) and max(len(a), len(b)) > 4:
            n = sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))
            out.append(f"{prefix}{k}: {n} of {max(len(a), len(b))} entries differ")
        else:
            out.append(f"{prefix}{k}: {a!r} there, {b!r} now")
    return out


def resumed_rows(path: str, identity: dict) -> list[dict]:
    """The finished rows of a partial file made with this identity; EvaluateError naming what differs when it
    was made with another."""
    try:
        with open(path) as f:
            saved = json.load(f)
        saved_identity, rows = saved["identity"], saved["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise EvaluateError(f"--resume: cannot read {path} ({e}); delete it or pass --force to start over") from None
    diff = differences(saved_identity, plain(identity))
    if diff:
        raise EvaluateError(f"--resume: {path} was made with another protocol ({'; '.join(diff)}); rerun with the "
                            "flags it was made with, or pass --force instead of --resume to start over")
    return rows


def run_rows(settings: list, generate, reference: Reference, identity: dict, path: str, done: list[dict],
             alpha: float = 1.0, progress: bool = False) -> list[dict]:
    """Score every (group, label, Sampling) setting, keeping the rows in `done` whose label and sampling match
    (their stems are not generated again); after each new row, all finished rows go to the partial file `path`.
    generate(sampling, label, on_examples) gives the stems. One progress bar counts examples over the sweep."""
    n = len(reference.examples)
    kept = {(r["label"], json.dumps(r["sampling"], sort_keys=True)): r for r in done}
    rows: list[dict | None] = [kept.get((label, json.dumps(plain(asdict(s)), sort_keys=True)))
                               for _, label, s in settings]
    rows = [None if r is None else {**r, "group": group} for r, (group, _, _) in zip(rows, settings)]
    if done:
        unused = len(done) - sum(r is not None for r in rows)
        print(f"resuming from {path}: {len(settings) - rows.count(None)} of {len(settings)} settings done"
              + (f"; {unused} saved rows whose setting is not in this sweep are dropped" if unused else ""),
              file=sys.stderr)
    with tqdm(total=len(settings) * n, initial=sum(r is not None for r in rows) * n, desc="sweep",
              unit="example", disable=not progress, dynamic_ncols=True) as bar:
        for i, (group, label, sampling) in enumerate(settings):
            if rows[i] is not None:
                continue
            stems = generate(sampling, label, bar.update)
            rows[i] = {"group": group, "label": label, "sampling": plain(asdict(sampling)),
                       **reference.score(stems, alpha, progress)}
            write_text_atomic(path, json.dumps({"identity": plain(identity),
                                                "rows": [r for r in rows if r is not None]}) + "\n")
    return rows


def without_draws(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "draws"} for r in rows]
