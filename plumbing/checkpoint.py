"""Checkpoints: saving (atomic) and loading them, and the model and codec rebuilt from one; the codec a user names.

A checkpoint is a plain dict of tensors and primitives (model weights, model config, codec spec, step,
optimizer, scheduler and RNG state, the training arguments, the sampling it recommends), loadable with
torch.load(weights_only=True). It is written to a temporary file beside its path and renamed into place, so a
crash never leaves a broken one.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import asdict, fields

import torch

import codec as codec_lib
from plumbing import spectral
from plumbing.audio import atomic_write
from plumbing.cli import source_commit
from codec import Codec, CodecUnavailable
from plumbing.distributed import is_main
from plumbing.instruments import INSTRUMENTS
from decode import Sampling
from model import ModelConfig, StemGen

BEST = "best.pt"  # beside a run's ckpt.pt: the weights with the lowest validation NLL
DEFAULT_CHECKPOINT = os.path.join("runs", "default", "ckpt.pt")  # where train.py writes, generate.py looks
# The model shipped in the repository (README "The shipped model"): used when no checkpoint is given and no
# run exists, so that a part can be added to a user's music right after the install.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this file is in plumbing/
SHIPPED_CHECKPOINT = os.path.join(REPO_ROOT, "checkpoints", "stemgen-music.pt")


def default_checkpoint() -> tuple[str, str]:
    """(path, why) of the checkpoint to use when none is given: the demo run's best weights, else its latest,
    else the shipped model."""
    best = os.path.join(os.path.dirname(DEFAULT_CHECKPOINT), BEST)
    for path, why in ((best, "the best weights of your run"), (DEFAULT_CHECKPOINT, "the latest weights of your run")):
        if os.path.isfile(path):
            return path, why
    return SHIPPED_CHECKPOINT, "the shipped model (no run in runs/default/)"


class CheckpointError(ValueError):
    """A checkpoint the user gave cannot be used (missing, unreadable, foreign, mismatched with its codec)."""


# A checkpoint may carry the sampling knobs its trainer measured to suit it (e.g. greedy finer levels), as
# {knob: value} over decode.Sampling's fields. generate.py, evaluate.py and the page start from the paper's
# values with these applied; their flags still override, and --paper-sampling ignores them.
SAMPLING = "sampling"
RECOMMENDABLE = tuple(f.name for f in fields(Sampling) if f.name not in ("steps", "scale_steps"))  # level-free


def check_sampling(sampling: dict) -> dict:
    """A recommended sampling, checked: only knobs of decode.Sampling that do not depend on the model's levels,
    with values it accepts."""
    unknown = set(sampling) - set(RECOMMENDABLE)
    if unknown:
        raise CheckpointError(f"unknown sampling knobs {sorted(unknown)}; choose from {list(RECOMMENDABLE)}")
    try:
        Sampling(**sampling)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"sampling {sampling}: {e}") from None
    return dict(sampling)


def recommended_sampling(ckpt: dict) -> dict:
    """The sampling knobs a checkpoint recommends ({} when it recommends none)."""
    return check_sampling(ckpt.get(SAMPLING) or {})


def parse_sampling(words: list[str]) -> dict:
    """KNOB=VALUE words (train.py --ship-sampling) as a checked sampling dict; values are numbers but guidance.
    The one word "none" is the empty recommendation (the paper's values)."""
    if [w.lower() for w in words] == ["none"]:
        return {}
    out = {}
    for w in words:
        knob, eq, value = w.partition("=")
        knob = knob.strip().replace("-", "_")
        if not eq or not value.strip():
            raise CheckpointError(f"--ship-sampling {w!r}: give KNOB=VALUE, e.g. fine_temperature=0")
        if knob == "guidance":
            out[knob] = value.strip()
            continue
        try:
            out[knob] = float(value)
        except ValueError:
            raise CheckpointError(f"--ship-sampling {w!r}: {value!r} is not a number") from None
    return check_sampling(out)


def sampling_text(sampling: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sampling.items())


def shipped(ckpt: dict, provenance: dict, sampling: dict | None = None) -> dict:
    """A checkpoint cut down to what generation needs (weights in bf16, config, codec, class counts, training
    arguments, the sampling it recommends) plus where it came from: small enough to ship in the repository.
    `sampling`, if given, replaces the recommendation the checkpoint carries ({}: none)."""
    keep = ("model_config", "codec_spec", "step", "best_val_nll", "best_step", "class_counts", "train_args",
            SAMPLING)
    out = {k: ckpt[k] for k in keep if k in ckpt}
    out["model"] = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    out["provenance"] = dict(provenance)
    if sampling is not None:
        out.pop(SAMPLING, None)
        out.update({SAMPLING: check_sampling(sampling)} if sampling else {})
    return out


STAGE_FLAGS = ("codec_file", "init_from")  # run arguments, not recipe knobs, that a stage's command must name


def train_command(a: dict, recipe_values=None) -> str:
    """The train.py command line of a run from its saved arguments: data, recipe and out, then every knob whose
    value differs from the recipe's (recipe_values(name) -> knob -> value), the codec file and --init-from."""
    words = ["python train.py", f"--data {a.get('data')}", f"--recipe {a.get('recipe')}", f"--out {a.get('out')}"]
    defaults = recipe_values(a["recipe"]) if recipe_values is not None and a.get("recipe") else {}
    for k, v in defaults.items():
        if k in a and a[k] != v:
            words.append(f"--{k.replace('_', '-')} {a[k]}")
    words += [f"--{k.replace('_', '-')} {a[k]}" for k in STAGE_FLAGS if a.get(k)]
    return " ".join(words)


def training_stages(a: dict, recipe_values=None, limit: int = 10) -> list[str]:
    """The commands of the runs a run was fine-tuned from (--init-from, followed while the files exist here),
    first stage first, ending with the run's own."""
    stages = [train_command(a, recipe_values)]
    while a.get("init_from") and os.path.isfile(a["init_from"]) and len(stages) < limit:
        a = load_checkpoint(a["init_from"], "cpu").get("train_args", {})
        stages.insert(0, train_command(a, recipe_values))
    return stages


def ship_run(out: str, dst: str, recipe_values=None, sampling: dict | None = None) -> str:
    """Write a finished run's best weights as a checkpoint to ship (checkpoint.shipped), with where they came
    from (recipe_values: as train_command's) and `sampling` as its recommendation (None: the one the weights
    carry); returns a line saying what was written."""
    src = os.path.join(out, BEST)
    if not os.path.isfile(src):
        raise CheckpointError(f"--ship: no {src}; train first")
    ckpt = load_checkpoint(src, "cpu")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        times = [r["time"] for r in map(json.loads, f) if "time" in r]
    a = {**ckpt.get("train_args", {}), "out": out}
    commit = source_commit()
    stages = training_stages(a, recipe_values)
    provenance = {
        "command": stages[-1], "stages": stages,
        "commit": commit[:7] if commit else "unknown", "data": a.get("data"), "best_step": ckpt.get("best_step"),
        "train_seconds": round(times[-1] - times[0]) if len(times) > 1 else None,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        "written": time.strftime("%Y-%m-%d"), "train_args": a}
    small = shipped(ckpt, provenance, sampling)
    save_checkpoint(dst, small)
    recommends = f"; recommends {sampling_text(small[SAMPLING])}" if SAMPLING in small else ""
    return f"wrote {dst} ({os.path.getsize(dst) / 2**20:.1f} MB){recommends}: {provenance}"

def config_dict(cfg: ModelConfig) -> dict:
    """The model config as the plain dict a checkpoint stores."""
    return asdict(cfg)


def make_checkpoint(model: StemGen, codec, opt, sched, state: dict, args, sampling: dict | None = None) -> dict:
    """Everything a resumed run needs; `model` is the plain StemGen (not a DDP or compiled wrapper).

    `state` holds the loop's counters (train.RunState as a dict); `args` the resolved training knobs,
    of which the plain values are kept (train_args), so that a resumed run uses the same data and recipe;
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
        "train_args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))},
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


# ---- the codec from a spec or a name: the one place that knows every codec --------------------------------

OFFLINE_CODEC_HINT = f"Or use the offline codec instead: --codec spectral (fit it first with `{spectral.FIT_HINT}`)."


def open_encodec(weights: str | None = None, device="cpu") -> Codec:
    """codec.load_encodec, its CodecUnavailable message ending with the offline alternative."""
    try:
        return codec_lib.load_encodec(weights, device)
    except CodecUnavailable as e:
        raise CodecUnavailable(f"{e} {OFFLINE_CODEC_HINT}") from None


def load_codec(spec: dict, device="cpu", weights: str | None = None) -> Codec:
    """Rebuild a codec from `Codec.spec()` (as stored in checkpoints).

    `weights` overrides where the codec's parameters come from: the Encodec folder for encodec_32khz,
    a fitted file for a spectral spec that does not embed its arrays.
    """
    name = spec.get("name") if isinstance(spec, dict) else None
    if name == "encodec_32khz":
        w = weights or spec.get("weights")
        codec = open_encodec(None if w in (None, "", codec_lib.ENCODEC_HUB_ID) else w, device)
    elif name == "spectral":
        codec = spectral.spectral_from_spec(spec, device, weights)
    else:
        raise ValueError(f"unknown codec spec {name!r}: expected 'encodec_32khz' or 'spectral'")
    for key in ("sample_rate", "frame_rate", "n_q", "bins"):
        if key in spec and spec[key] != getattr(codec, key):
            raise CodecUnavailable(f"codec mismatch: the spec says {key}={spec[key]} but the loaded "
                                   f"{codec.name} codec has {getattr(codec, key)}; pass the weights it was made with")
    return codec


def open_codec(name: str, weights: str | None = None, device="cpu") -> Codec:
    """The codec a user names on a command line: `--codec encodec_32khz|spectral --codec-weights PATH`."""
    if name == "encodec_32khz":
        return open_encodec(weights, device)
    if name == "spectral":
        if not weights:
            raise CodecUnavailable(f"--codec spectral needs the fitted file: --codec-weights FILE "
                                   f"(make it with `{spectral.FIT_HINT}`)")
        return spectral.spectral_from_spec(spectral.load_spectral_file(weights), device)
    raise ValueError(f"unknown codec {name!r}: choose encodec_32khz or spectral")


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


def training_codec(recipe, data_dir: str, device, codec_file: str | None = None, weights: str | None = None,
                   progress: bool = True, resume_spec: dict | None = None) -> Codec:
    """The codec a training run uses (`recipe` is train.Recipe: its codec, codec_bins and seed): the paper's
    Encodec, or the offline spectral codec, fitted on the training data (on the first process) if not there
    yet. A resumed run uses the codec its checkpoint stores (resume_spec)."""
    if resume_spec is not None:
        return load_codec(resume_spec, device=device, weights=weights)
    if recipe.codec != "spectral":
        return open_codec(recipe.codec, weights, device)
    path = codec_file or os.path.join(data_dir, "spectral_codec.pt")
    if not os.path.isfile(path):
        if not is_main():
            hint = spectral.FIT_HINT.replace("DATA_DIR", data_dir).replace("FILE", path)
            raise CodecUnavailable(f"fit the spectral codec first: {hint}")
        print(f"fitting the offline spectral codec on {data_dir} -> {path}", file=sys.stderr)
        spectral.fit_spectral(data_dir, path, bins=recipe.codec_bins, seed=recipe.seed, progress=progress)
    return open_codec("spectral", path, device)
