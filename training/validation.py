"""Training's validation and its record (train.py): fixed held-out pairs; their scores (the level-0 NLL with and
without the context, from metrics/listening.py, and the paper's masked-token accuracy) logged to metrics.jsonl
as the run goes; and the report on the best weights at its end (curves.py draws the rows)."""
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
from model import autocast
from training import pool
from training.checkpoint import load_checkpoint
from audio.instruments import NULL_INSTRUMENT


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


@torch.no_grad()
def masked_accuracy(model, val: dict, batch: int, null_instrument: int, drop_context: bool = False,
                    drop_instrument: bool = False) -> dict:
    """Masked-token accuracy per level and overall on fixed pairs and masks (Sec. 3; val["masks"]: one
    (masked, loss_mask) per level). Partly visible targets make it a measure of copying, not of listening."""
    model.eval()
    dev = next(model.parameters()).device
    correct, total = [0] * len(val["masks"]), [0] * len(val["masks"])
    inst_all = torch.full_like(val["instrument"], null_instrument) if drop_instrument else val["instrument"]
    for q, (masked, loss_mask) in enumerate(val["masks"]):
        for i in range(0, len(inst_all), batch):
            sl = slice(i, i + batch)
            ctx, tgt = val["context"][sl].to(dev).long(), val["target"][sl, q].to(dev).long()
            dropped = torch.full((ctx.shape[0],), drop_context, device=dev)
            with autocast(dev):
                logits = model(ctx, masked[sl].to(dev), inst_all[sl].to(dev), dropped, level=q)
            lm = loss_mask[sl, q].to(dev)
            correct[q] += (logits.argmax(-1)[lm] == tgt[lm]).sum().item()
            total[q] += lm.sum().item()
    model.train()
    return {"acc": sum(correct) / max(sum(total), 1),
            "acc_per_level": [c / max(t, 1) for c, t in zip(correct, total)]}


def constant_baseline(val: dict) -> dict:
    """The best input-ignoring predictor: each level's most frequent token among the scored positions.

    Computed on the validation targets themselves, so it is an upper bound for any constant guess.
    """
    correct, total = [], []
    for q, (_, loss_mask) in enumerate(val["masks"]):
        scored = val["target"][:, q].long()[loss_mask[:, q]]
        correct.append(torch.bincount(scored).max().item() if scored.numel() else 0)
        total.append(scored.numel())
    return {"acc": sum(correct) / max(sum(total), 1),
            "acc_per_level": [c / max(n, 1) for c, n in zip(correct, total)]}


def validation_scores(model, val: dict, batch: int, null_instrument: int) -> dict:
    """What training tracks (train.py): the level-0 NLL with and without the context, and masked accuracy."""
    nll, _ = listening.level0_nll(model, val["context"], val["target"], val["instrument"], batch=batch)
    nll0, _ = listening.level0_nll(model, val["context"], val["target"], val["instrument"], True, batch)
    return {"nll": float(nll.mean()), "nll_no_context": float(nll0.mean()),
            **masked_accuracy(model, val, batch, null_instrument)}


def full_report(model, val: dict, batch: int, frame_rate: float, null_instrument: int) -> dict:
    """The listening report and the masked-accuracy table scored four ways (the end of a training run)."""
    report = listening.listening_report(model, val, batch, frame_rate)
    report["masked_accuracy"] = {
        "with_context": masked_accuracy(model, val, batch, null_instrument),
        "context_dropped": masked_accuracy(model, val, batch, null_instrument, drop_context=True),
        "both_dropped": masked_accuracy(model, val, batch, null_instrument, drop_context=True, drop_instrument=True),
        "constant_baseline": constant_baseline(val)}
    return report


def format_masked_accuracy(table: dict) -> str:
    """full_report's masked-accuracy table as plain text lines."""
    lines = ["masked-token accuracy, partly visible targets (overall | per level):"]
    lines += [f"  {name:>18}: {r['acc']:.3f} | {' '.join(f'{a:.3f}' for a in r['acc_per_level'])}"
              for name, r in table.items()]
    return "\n".join(lines)


def log_step(bar, metrics, loss: float, state, lr: float, tokens_per_s: float) -> None:
    """The progress bar's figures and the step's row in metrics.jsonl."""
    bar.set_postfix(loss=f"{loss:.3f}", val_nll=f"{state.best:.3f}" if state.best < math.inf else "-",
                    lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:.0f}")
    metrics.write(json.dumps({"kind": "train", "step": state.step, "loss": loss, "lr": lr,
                              "time": time.time()}) + "\n")


def log_validation(model, val, micro, state, metrics) -> bool:
    """Validate, append the row to metrics.jsonl, and say whether this is the lowest NLL so far."""
    v = validation_scores(model, val, micro, NULL_INSTRUMENT)
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
    report = full_report(model, val, batch, frame_rate, NULL_INSTRUMENT)
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"kind": "final", "step": step, **report}) + "\n")
    print(listening.format_report(report) + "\n" + format_masked_accuracy(report["masked_accuracy"]),
          file=sys.stderr)
    return report
