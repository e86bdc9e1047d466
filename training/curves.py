"""Draw a run's curves: `python -m training.curves --out RUN` reads RUN/metrics.jsonl and writes RUN/curves.png."""
from __future__ import annotations

import argparse
import json
import os
import sys

from matplotlib.figure import Figure

from cli.common import USER_ERROR


def plot_curves(metrics_path: str, out_png: str) -> str:
    """Draw a run's training loss and its validation NLL with and without the context (when the two part,
    the model has started to listen) from metrics.jsonl to a PNG; returns its path."""
    rows = [json.loads(line) for line in open(metrics_path)]
    tr = [r for r in rows if r.get("kind") == "train"]
    va = [r for r in rows if r.get("kind") == "val" and "nll" in r]
    fig = Figure(figsize=(11, 4))
    ax = fig.subplots(1, 2)
    ax[0].plot([r["step"] for r in tr], [r["loss"] for r in tr])
    ax[0].set(xlabel="step", ylabel="masked-token loss", title="training loss")
    ax[1].plot([r["step"] for r in va], [r["nll"] for r in va], label="with context")
    ax[1].plot([r["step"] for r in va], [r["nll_no_context"] for r in va], label="context dropped")
    ax[1].set(xlabel="step", ylabel="NLL (nats)", title="validation: level 0, whole target masked")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    return out_png


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.curves", description=__doc__)
    p.add_argument("--out", required=True, help="the run's folder (written by train.py --out)")
    args = p.parse_args(argv)
    metrics = os.path.join(args.out, "metrics.jsonl")
    if not os.path.isfile(metrics):
        print(f"error: no metrics file in {args.out}; train first", file=sys.stderr)
        return USER_ERROR
    print(plot_curves(metrics, os.path.join(args.out, "curves.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
