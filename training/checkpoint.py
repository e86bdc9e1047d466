"""Checkpoints: saving (atomic) and loading them, and the model and its codec rebuilt from one.

A checkpoint is a plain dict of tensors and primitives (model weights, model config, codec spec, step,
optimizer, scheduler and RNG state, the training arguments, the sampling it recommends), loadable with
torch.load(weights_only=True). It is written to a temporary file beside its path and renamed into place, so a
crash never leaves a broken one.
"""
from __future__ import annotations

import os
from dataclasses import asdict

import torch

from audio.files import atomic_write
from codec import load_codec
from audio.instruments import INSTRUMENTS
from decode import check_sampling
from model import ModelConfig, StemGen

BEST = "best.pt"  # beside a run's ckpt.pt: the weights with the lowest validation NLL
DEFAULT_CHECKPOINT = os.path.join("runs", "default", "ckpt.pt")  # where train.py writes, generate.py looks
# The model shipped in the repository (README "The shipped model"): used when no checkpoint is given and no
# run exists, so that a part can be added to a user's music right after the install.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this file is in training/
SHIPPED_CHECKPOINT = os.path.join(REPO_ROOT, "checkpoints", "stemgen-music.pt")


def default_checkpoint() -> tuple[str, str]:
    """(path, why) of the checkpoint to use when none is given: the shipped model, naming a run in runs/default/
    (the demo's, unless told otherwise) and how to choose it instead."""
    why = "the shipped model"
    best = os.path.join(os.path.dirname(DEFAULT_CHECKPOINT), BEST)
    for path in (best, DEFAULT_CHECKPOINT):
        if os.path.isfile(path):
            why += (f"; your run is in {os.path.dirname(path)}/ and --checkpoint {path} uses it, but a demo run "
                    f"follows held-out music less: bass key score {DEMO_KEY_SCORE} against the shipped model's "
                    f"{SHIPPED_KEY_SCORE} (README, Results)")
            break
    return SHIPPED_CHECKPOINT, why


SHIPPED_KEY_SCORE, DEMO_KEY_SCORE = 0.221, -0.008   # README's results table: the bass transposition test, 48 test works


class CheckpointError(ValueError):
    """A checkpoint the user gave cannot be used (missing, unreadable, foreign, mismatched with its codec)."""


# A checkpoint may carry the sampling knobs its recipe chose on validation data, as {knob: value} over
# decode.Sampling's level-free fields (decode.resolve_sampling applies them).
SAMPLING = "sampling"


def recommended_sampling(ckpt: dict) -> dict:
    """The sampling knobs a checkpoint recommends ({} when it recommends none)."""
    try:
        return check_sampling(ckpt.get(SAMPLING) or {})
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def config_dict(cfg: ModelConfig) -> dict:
    """The model config as the plain dict a checkpoint stores."""
    return asdict(cfg)


def make_checkpoint(model: StemGen, codec, opt, sched, state: dict, train_args: dict,
                    sampling: dict | None = None) -> dict:
    """Everything a resumed run needs; `model` is the plain StemGen (not a DDP or compiled wrapper).

    `state` holds the loop's counters (train.RunState as a dict); `train_args` the run's knobs and settings,
    of which the plain values are kept, so that a resumed run uses the same data and recipe;
    `sampling` the knobs the checkpoint recommends (SAMPLING), if any.
    """
    ckpt = {
        "model_config": config_dict(model.cfg), "codec_spec": codec.spec(), "model": model.state_dict(),
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": state["step"],
        "best_val_nll": state["best"], "best_step": state["best_step"], "nonfinite_steps": state["nonfinite"],
        "class_counts": (None if state["class_counts"] is None else       # targets trained on, per class
                         dict(zip(INSTRUMENTS, map(int, state["class_counts"])))),
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "train_args": {k: v for k, v in train_args.items() if isinstance(v, (int, float, str, bool, type(None)))},
    }
    if sampling:
        ckpt[SAMPLING] = check_sampling(sampling)
    return ckpt


def save_checkpoint(path: str, ckpt: dict) -> None:
    """Write a checkpoint atomically: a temporary file in the same folder, then rename."""
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp), ".pt", overwrite=True)


def load_checkpoint(path: str, device="cpu") -> dict:
    """Load a checkpoint dict (plain tensors and primitives) with weights_only=True."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path} (train one with `python train.py`)")
    return torch.load(path, map_location=device, weights_only=True)


def load_model(checkpoint: str, device: str | torch.device = "cpu", codec_weights: str | None = None):
    """Load a checkpoint and rebuild its model (eval mode) and codec. Returns (model, codec, ckpt).

    `codec_weights` says where the codec's parameters are when the checkpoint's own path does not exist here
    (a local facebook/encodec_32khz folder, or a fitted spectral codec file).
    """
    if not os.path.isfile(checkpoint):
        raise CheckpointError(f"checkpoint not found: {checkpoint} (train one with `python train.py`, "
                              f"or pass --checkpoint PATH)")
    try:
        ckpt = load_checkpoint(checkpoint, device="cpu")
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {checkpoint}: {e} "
                              f"(is it a StemGen checkpoint written by train.py?)") from None
    missing = [k for k in ("model_config", "model", "codec_spec") if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {checkpoint} lacks {', '.join(missing)}; "
                              f"it was not written by train.py")
    try:
        net = StemGen.from_checkpoint(ckpt, device)
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {checkpoint} does not fit this version of model.py: "
                              f"{str(e).splitlines()[0]}") from None
    try:  # CodecUnavailable propagates to the caller
        tok = load_codec(ckpt["codec_spec"], device=device, weights=codec_weights)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {checkpoint}: {e}") from None
    if (tok.n_q, tok.bins) != (net.cfg.n_q, net.cfg.bins):
        raise CheckpointError(f"checkpoint {checkpoint}: codec has {tok.n_q} x {tok.bins} tokens but the model "
                              f"expects {net.cfg.n_q} x {net.cfg.bins}")
    return net, tok, ckpt


# ---- what a checkpoint says about its training ------------------------------------------------------------

def class_counts(ckpt: dict) -> list[int] | None:
    """A checkpoint's training targets per class as a list indexed like instruments.INSTRUMENTS (make_checkpoint's
    dict read back); None for a checkpoint from before the counts were kept: what it saw is unknown."""
    counts = ckpt.get("class_counts")
    return None if counts is None else [int(counts.get(name, 0)) for name in INSTRUMENTS]


def trained_classes(ckpt: dict) -> dict[str, int] | None:
    """{class name: training targets seen} for the classes a checkpoint trained on; None if it does not say
    (written before the counts were kept)."""
    counts = class_counts(ckpt)
    return None if counts is None else {name: n for name, n in zip(INSTRUMENTS, counts) if n > 0}


def checkpoint_window_seconds(ckpt: dict) -> float | None:
    """The crop length the model was trained on, if the checkpoint records it (train.py's --crop-seconds)."""
    value = (ckpt.get("train_args") or {}).get("crop_seconds")
    return float(value) if value else None
