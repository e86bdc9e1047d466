"""How we know the model listens: the context's worth in nats, and in the chroma of what it generates.

Masked-token accuracy with partly visible targets mostly measures how well the model copies a target's
visible neighbours, so it cannot show listening. Generation starts from the coarsest level fully masked;
there the model has only its conditions to go on. The token-level measure is the NLL of level 0 with every
target token masked, for held-out pairs scored four ways:

    (a) the true context          (b) the context dropped (the learned null context)
    (c) another song's context    (d) the same context, circularly shifted by at least `min_shift` frames

Each gain (b - a, c - a, d - a) is a mean over pairs with a song-level bootstrap interval: songs are
resampled with replacement, so pairs from one song count as one piece of evidence. A model that ignores
its context scores zero gains; (d) separates "knows the key" from "follows the chords in time".

The audio-level measure compares a generated stem's chroma with its own context's and with another song's
context's (paired per example, bootstrap interval over examples).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from model import autocast

CONDITIONS = ("true_context", "context_dropped", "other_song", "shifted")
MIN_SHIFT_SECONDS = 1.5  # the shifted context moves at least this far (a third of the crop when it is shorter)
CHROMA_MEASURES = ("frame", "key")  # chroma_agreement's two numbers: chords in time, and key
GAINS = {"over_dropped": "context_dropped", "over_other_song": "other_song", "over_shifted": "shifted"}


@torch.no_grad()
def level0_nll(model, context: torch.Tensor, target: torch.Tensor, instrument: torch.Tensor,
               context_dropped: bool = False, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair NLL (nats per token) and top-1 accuracy of level 0 with the whole target masked.

    Args:
        context, target: tokens [N, Q, T]; instrument: [N].
    Returns:
        nll [N], acc [N] (float32, on the CPU).
    """
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    mask_id = model.cfg.mask_id
    nll, acc = [], []
    for i in range(0, context.shape[0], batch):
        ctx = context[i:i + batch].to(dev).long()
        tgt = target[i:i + batch].to(dev).long()
        dropped = torch.full((ctx.shape[0],), context_dropped, device=dev)
        with autocast(dev):
            logits = model(ctx, torch.full_like(tgt, mask_id), instrument[i:i + batch].to(dev), dropped, level=0)
        logp = F.log_softmax(logits.float(), dim=-1)                                     # [b, T, V]
        nll.append(-logp.gather(-1, tgt[:, 0, :, None])[..., 0].mean(-1).cpu())          # [b]
        acc.append((logp.argmax(-1) == tgt[:, 0]).float().mean(-1).cpu())
    model.train(was_training)
    return torch.cat(nll), torch.cat(acc)


def other_song_order(song, instrument=None, context_classes=None) -> tuple[torch.Tensor, int]:
    """For each pair, the index of a pair from another song (half-way round the list, then onwards), and how
    many pairs had to fall back.

    With the pairs' target classes `instrument` [N] and their contexts' classes `context_classes` (bool
    [N, n_classes]), a pair whose own context lacks its target's class only takes a context that lacks it
    too (a context holding the part to be generated would tell the model more than the true one). When no
    other song's pair qualifies, the first other song's pair is taken and counted as a fallback.
    Returns (order long [N], fallbacks).
    """
    song = np.asarray(song)
    n = len(song)
    if (instrument is None) != (context_classes is None):
        raise ValueError("other_song_order needs both the target classes and the context classes, or neither")
    if instrument is not None:
        instrument, held = np.asarray(instrument, dtype=np.int64), np.asarray(context_classes, dtype=bool)
        if held.shape[0] != n or len(instrument) != n:
            raise ValueError(f"other_song_order: {n} songs, {len(instrument)} target classes and "
                             f"{held.shape[0]} rows of context classes; give one of each per pair")
    out, fallbacks = torch.empty(n, dtype=torch.long), 0
    for i in range(n):
        candidates = (i + n // 2 + np.arange(n)) % n
        other = song[candidates] != song[i]
        if not other.any():
            raise ValueError("another song's context needs pairs from at least two songs")
        fitting = other
        if instrument is not None and not held[i, instrument[i]]:
            fitting = other & ~held[candidates, instrument[i]]
        if not fitting.any():
            fitting, fallbacks = other, fallbacks + 1
        out[i] = int(candidates[int(np.argmax(fitting))])
    return out, fallbacks


def shift_context(context: torch.Tensor, min_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Roll each pair's context tokens [N, Q, T] in time by a random shift in [min_shift, T - min_shift]."""
    T = context.shape[-1]
    if T < 2 * min_shift:
        raise ValueError(f"a {T}-frame context cannot be shifted by {min_shift} frames both ways")
    shifts = torch.randint(min_shift, T - min_shift + 1, (context.shape[0],), generator=generator)
    return torch.stack([torch.roll(c, int(s), dims=-1) for c, s in zip(context, shifts)])


def song_bootstrap(values: np.ndarray, song: np.ndarray, n_boot: int = 2000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-pair values and a percentile interval from resampling songs with replacement."""
    values = np.asarray(values, dtype=np.float64)
    index, draws = song_draws(song, n_boot, seed)
    lo, hi = np.quantile(mean_draws(values, index, draws), [(1 - level) / 2, (1 + level) / 2])
    return float(values.mean()), float(lo), float(hi)


def song_draws(songs, n_boot: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(song index of each example [N], draws [n_boot, n_songs]: how often each resample takes each song, songs
    resampled with replacement): the resamples song_bootstrap takes, shareable by several statistics."""
    names, index = np.unique(np.asarray(songs), return_inverse=True)
    pick = np.random.default_rng(seed).integers(len(names), size=(n_boot, len(names)))
    draws = np.zeros((n_boot, len(names)))
    np.add.at(draws, (np.arange(n_boot)[:, None], pick), 1.0)
    return index, draws


def mean_draws(values: np.ndarray, song_index: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """The mean of per-example values over each resample of songs [B]."""
    n_songs = draws.shape[1]
    sums = np.bincount(song_index, weights=np.asarray(values, dtype=np.float64), minlength=n_songs)
    counts = np.bincount(song_index, minlength=n_songs).astype(np.float64)
    return (draws @ sums) / (draws @ counts)


def listening_report(model, pairs: dict, batch: int = 32, frame_rate: float = 50.0, seed: int = 0,
                     min_shift: int | None = None) -> dict:
    """Score held-out pairs four ways (module docstring) and bootstrap each gain over songs.

    Args:
        pairs: dict of context, target [N, Q, T], instrument [N], song [N] and optionally context_classes
            [N, n_classes] (pool.token_pool's layout); with the classes, another song's context never holds
            the target's class when the pair's own context does not (other_song_order).
        frame_rate: token frames per second, for the shift.
        min_shift: least circular shift of the shifted context in frames; default MIN_SHIFT_SECONDS, at most
            a third of the crop.
    Returns:
        {"conditions": {name: {"nll", "acc"}}, "gains": {name: {"mean", "lo", "hi"}}, "pairs", "songs",
        "min_shift_frames", "other_song_fallbacks" (None without context classes), "verdict"}
    """
    ctx, tgt, inst, song = pairs["context"], pairs["target"], pairs["instrument"], pairs["song"]
    classes = pairs.get("context_classes")
    n_songs = int(len(torch.unique(song)))
    if n_songs < 2:
        raise ValueError("the listening report needs held-out pairs from at least two songs")
    if min_shift is None:
        min_shift = min(round(MIN_SHIFT_SECONDS * frame_rate), ctx.shape[-1] // 3)
    g = torch.Generator().manual_seed(seed)
    other, fallbacks = other_song_order(song, None if classes is None else inst, classes)
    contexts = {"true_context": (ctx, False), "context_dropped": (ctx, True),
                "other_song": (ctx[other], False), "shifted": (shift_context(ctx, min_shift, g), False)}
    per_pair = {name: level0_nll(model, c, tgt, inst, dropped, batch) for name, (c, dropped) in contexts.items()}
    base = per_pair["true_context"][0].numpy()
    gains = {}
    for gain, worse in GAINS.items():
        mean, lo, hi = song_bootstrap(per_pair[worse][0].numpy() - base, song.numpy(), seed=seed)
        gains[gain] = {"mean": mean, "lo": lo, "hi": hi}
    report = {"conditions": {k: {"nll": float(v[0].mean()), "acc": float(v[1].mean())} for k, v in per_pair.items()},
              "gains": gains, "pairs": int(len(song)), "songs": n_songs, "min_shift_frames": int(min_shift),
              "other_song_fallbacks": None if classes is None else fallbacks}
    report["verdict"] = verdict(report)
    return report


def verdict(report: dict, bound: float = 0.0) -> str:
    """One line: listens when the gains over a dropped context and over another song's context are above bound."""
    d, o, s = (report["gains"][k] for k in ("over_dropped", "over_other_song", "over_shifted"))
    where = f"({report['pairs']} held-out pairs from {report['songs']} songs, 95 % song-bootstrap intervals)"
    if d["lo"] > bound and o["lo"] > bound:
        timing = " and follows it in time" if s["lo"] > bound else ""
        return (f"listens{timing}: the context lowers the level-0 NLL by {d['mean']:.3f} nats "
                f"[{d['lo']:.3f}, {d['hi']:.3f}] against a dropped context, {o['mean']:.3f} [{o['lo']:.3f}, "
                f"{o['hi']:.3f}] against another song's and {s['mean']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}] "
                f"against a shifted one {where}")
    return (f"does not listen yet: gain {d['mean']:.3f} nats [{d['lo']:.3f}, {d['hi']:.3f}] against a dropped "
            f"context, {o['mean']:.3f} [{o['lo']:.3f}, {o['hi']:.3f}] against another song's {where}")


def format_report(report: dict) -> str:
    """The listening table as plain text lines."""
    lines = ["level 0, whole target masked    NLL (nats)   top-1 acc"]
    for name in CONDITIONS:
        c = report["conditions"][name]
        lines.append(f"  {name.replace('_', ' '):<30} {c['nll']:8.3f}   {c['acc']:8.3f}")
    for name, g in report["gains"].items():
        lines.append(f"  gain {name.replace('_', ' '):<25} {g['mean']:8.3f}   [{g['lo']:.3f}, {g['hi']:.3f}]")
    lines.append(report["verdict"])
    if report.get("other_song_fallbacks"):
        lines.append(f"  ({report['other_song_fallbacks']} pairs took another song's context that holds their "
                     "target's class: no other song's context without it)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ audio level


CHROMA_GATE_DB = -60.0  # dB: chroma frames this far below the clip's loudest are silence (see chroma)


def chroma(wave: np.ndarray, sample_rate: int, hop: int = 2048,
           gate_db: float | None = None) -> np.ndarray:
    """12 x frames chroma of a mono wave (librosa's STFT chroma, each frame scaled to a peak of 1), with the frames
    more than `gate_db` below the clip's loudest frame (RMS) set to 0, as digital silence already is.

    Why the gate: librosa scales every frame to a peak of 1, however quiet. A codec that decodes a rest to a
    faint fixed spectrum (the spectral codec leaves one about 140 dB down) then gives every rest full weight and
    the same pitch classes in every key: decoded bass lines looked as if they ignored the key when only their
    inaudible rests did (docs/log.md). gate_db None: CHROMA_GATE_DB (evaluate.py --chroma-gate sets it).
    """
    import librosa
    y = np.asarray(wave, dtype=np.float32)
    c = librosa.feature.chroma_stft(y=y, sr=sample_rate, hop_length=hop, n_fft=4 * hop)
    gate_db = CHROMA_GATE_DB if gate_db is None else float(gate_db)
    rms = librosa.feature.rms(y=y, frame_length=4 * hop, hop_length=hop)[0]
    n = min(c.shape[1], len(rms))
    c[:, :n] *= rms[:n] >= rms.max() * 10.0 ** (gate_db / 20.0)
    return c


def chroma_agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(frame, key) agreement of two chromas [12, F]: mean per-frame Pearson correlation, and the Pearson
    correlation of their time averages. Frames where either is flat count as 0."""
    n = min(a.shape[1], b.shape[1])
    a, b = a[:, :n], b[:, :n]
    za, zb = a - a.mean(0), b - b.mean(0)
    den = np.sqrt((za ** 2).sum(0) * (zb ** 2).sum(0))
    frame = np.where(den > 1e-9, (za * zb).sum(0) / np.maximum(den, 1e-12), 0.0)
    ma, mb = a.mean(1) - a.mean(), b.mean(1) - b.mean()
    key_den = np.sqrt((ma ** 2).sum() * (mb ** 2).sum())
    return float(frame.mean()), float((ma * mb).sum() / key_den) if key_den > 1e-12 else 0.0


def chroma_check(stems: list[np.ndarray], contexts: list[np.ndarray], song: list[int], sample_rate: int,
                 seed: int = 0, instrument=None, context_classes=None) -> dict:
    """Paired audio-level check: stem i against context i minus stem i against another song's context.

    With the stems' classes `instrument` [N] and the contexts' classes `context_classes` (bool [N, n_classes]),
    the other song's context is chosen as in the listening report (other_song_order).
    Returns per measure ("frame", "key"): own, other (means) and the paired gain with a bootstrap interval
    over songs; and "other_song_fallbacks" (None without the classes).
    """
    other, fallbacks = other_song_order(song, instrument, context_classes)
    cs = [chroma(s, sample_rate) for s in stems]
    cc = [chroma(c, sample_rate) for c in contexts]
    own = np.array([chroma_agreement(cs[i], cc[i]) for i in range(len(cs))])               # [N, 2]
    oth = np.array([chroma_agreement(cs[i], cc[int(other[i])]) for i in range(len(cs))])
    out = {}
    for k, name in enumerate(CHROMA_MEASURES):
        mean, lo, hi = song_bootstrap(own[:, k] - oth[:, k], np.asarray(song), seed=seed)
        out[name] = {"own": float(own[:, k].mean()), "other": float(oth[:, k].mean()), "gain": mean, "lo": lo, "hi": hi}
    out["other_song_fallbacks"] = None if instrument is None else fallbacks
    return out
