"""Training's validation (train.py): fixed held-out pairs, their scores logged as the run goes, and the report
on the best weights at its end (the scores themselves are metrics/listening.py's)."""
from __future__ import annotations

import json
import math
import os
import sys
import time

import torch

from data import DatasetError
from masking import mask_target
from metrics import listening
from plumbing import pool
from plumbing.checkpoint import load_checkpoint
from plumbing.instruments import NULL_INSTRUMENT


def validation_pairs(codec, recipe, data_dir: str, progress: bool) -> dict:
    """Fixed held-out pairs (tokens kept on the CPU) and one fixed mask per level for the accuracy table;
    `recipe` is train.Recipe (its crop_seconds, val_pairs and seed)."""
    val = pool.split_pool(codec, data_dir, "validation", recipe.crop_seconds, recipe.val_pairs, 10_000 + recipe.seed,
                          progress, "validation pairs")
    if len(torch.unique(val["song"])) < 2:
        raise DatasetError(f"the validation split of {data_dir} gives pairs from one song only; the listening "
                           "report compares songs, so it needs at least two (add tracks to validation/)")
    g = torch.Generator().manual_seed(recipe.seed)
    tgt = val["target"].long()
    val["masks"] = [mask_target(tgt, codec.bins, g, level=torch.full_like(val["instrument"], q))[:2]
                    for q in range(codec.n_q)]
    return val


def log_step(bar, metrics, loss: float, state, lr: float, tokens_per_s: float) -> None:
    """The progress bar's figures and the step's row in metrics.jsonl."""
    bar.set_postfix(loss=f"{loss:.3f}", val_nll=f"{state.best:.3f}" if state.best < math.inf else "-",
                    lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:.0f}")
    metrics.write(json.dumps({"kind": "train", "step": state.step, "loss": loss, "lr": lr,
                              "time": time.time()}) + "\n")


def log_validation(model, val, micro, state, metrics) -> bool:
    """Validate, append the row to metrics.jsonl, and say whether this is the lowest NLL so far."""
    v = listening.validation_scores(model, val, micro, NULL_INSTRUMENT)
    metrics.write(json.dumps({"kind": "val", "step": state.step, **v}) + "\n")
    metrics.flush()
    if v["nll"] < state.best:
        state.best, state.best_step = v["nll"], state.step
        return True
    return False


def report_best(model, val: dict, batch: int, frame_rate: float, best_path: str, out: str, step: int) -> dict:
    """Score the weights with the lowest validation NLL (what generate.py is pointed at), print and log it."""
    if os.path.isfile(best_path):
        model.load_state_dict(load_checkpoint(best_path, next(model.parameters()).device)["model"])
    report = listening.full_report(model, val, batch, frame_rate, NULL_INSTRUMENT)
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"kind": "final", "step": step, **report}) + "\n")
    print(listening.format_report(report), file=sys.stderr)
    return report
