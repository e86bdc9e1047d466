"""The training recipes (Sec. 3): every knob of a run, with the paper's values as defaults, and the two CPU
recipes of ours (`demo`, and `music`, the shipped model's). train.py fills a Recipe from one of them and the
flags given; training/ship.py names the knobs in which a run differs from its recipe."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from data import CROP_SECONDS
from masking import Objective
from spectral.dsp import SpectralConfig


@dataclass
class Recipe:
    """Training knobs; defaults are the paper's recipe (Sec. 3). The objective's knobs are masking.Objective."""
    preset: str = field(default="paper", metadata={"help": "model size (paper: 1024 x 20 layers, ~250 M)"})
    codec: str = field(default="encodec_32khz", metadata={"help": "audio tokenizer: encodec_32khz (paper) or spectral"})
    codec_bins: int = field(default=SpectralConfig.bins, metadata={"help": "spectral codec: codebook size when it is fitted here"})
    batch: int = field(default=40, metadata={"help": "global batch size in examples"})
    micro_batch: int = field(default=8, metadata={
        "help": "at most this many examples per forward pass per process; the rest is gradient accumulation"})
    crop_seconds: float = field(default=CROP_SECONDS, metadata={"help": "training crop length in seconds"})
    lr: float = field(default=5e-4, metadata={"help": "peak learning rate"})
    warmup: int = field(default=10_000, metadata={"help": "linear warm-up steps"})
    hold: int = field(default=50_000, metadata={"help": "steps at the peak learning rate"})
    decay: int = field(default=300_000, metadata={"help": "exponential decay steps (to --final-lr-frac of the peak)"})
    final_lr_frac: float = field(default=0.01, metadata={"help": "LR at the end of the decay, as a fraction of the peak"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    max_steps: int = field(default=360_000, metadata={"help": "stop after this many optimizer steps"})
    patience: int = field(default=20_000, metadata={"help": "early stop after this many steps without a lower validation NLL"})
    eval_every: int = field(default=1000, metadata={"help": "validate every N steps"})
    save_every: int = field(default=1000, metadata={"help": "checkpoint every N steps"})
    val_pairs: int = field(default=400, metadata={"help": "fixed held-out validation pairs (the listening report needs >= 256)"})
    codeword_init: bool = field(default=False, metadata={
        "help": "start the token embeddings from the codec's codewords (ours; model.init_from_codewords)"})
    pool_pairs: int = field(default=0, metadata={
        "help": "0: draw and tokenise pairs on the fly (paper); N: train from a pool of N pairs tokenised once"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default)"})
    workers: int = field(default=4, metadata={"help": "DataLoader worker processes (on-the-fly pairs)"})
    crop_grid: float = field(default=0.0, metadata={
        "help": "on-the-fly pairs: crops start at multiples of this many seconds into their segment (0: anywhere); "
                "what --token-cache-gb needs for crops to recur"})
    token_cache_gb: float = field(default=0.0, metadata={
        "help": "on-the-fly pairs: keep the tokens of target crops, up to this many GB in memory, and reuse them "
                "when a crop recurs (0: off; pool.TokenCache)"})
    encode_dtype: str = field(default="fp32", metadata={
        "help": "on-the-fly pairs: tokenize in fp32 or under bf16 autocast (bench.py train on CUDA reports bf16's "
                "time and per-level agreement with fp32)"})
    seed: int = field(default=0, metadata={"help": "seed of the model init, the data and the masks"})
    objective: Objective = field(default_factory=Objective)
    # not a training knob: the sampling this recipe's checkpoints recommend (decode.resolve_sampling applies it
    # over the paper's values), chosen on the recipe's own validation data (docs/log.md)
    sampling: dict = field(default_factory=dict)


RECIPES = {
    "paper": Recipe(),
    # The CPU demo: small model and short crops; embeddings started from the codewords; a pool of pre-tokenised
    # pairs (reading ~10 stems per item would dominate a CPU step); level 0, where listening shows, trained 70 %
    # of the time; 2 threads, no workers. docs/log.md has the measurements behind each.
    "demo": Recipe(preset="tiny", codec="spectral", batch=16, micro_batch=16, crop_seconds=5.0, lr=2e-3,
                   warmup=100, hold=1000, decay=700, final_lr_frac=0.1, max_steps=1800, patience=1800,
                   eval_every=300, save_every=300, val_pairs=256, codeword_init=True, pool_pairs=4096,
                   threads=2, workers=0, objective=Objective(coarse_prob=0.7),
                   sampling={"fine_temperature": 0.0}),
    # The shipped checkpoint (checkpoints/, made by scripts/music.sh): the demo's model, objective and input
    # pipeline, trained longer on a larger pool of composed songs and real works (songs/corpus.py), one GM program
    # per class as in the demo (with several per class the tiny model did not listen: docs/log.md).
    "music": Recipe(preset="tiny", codec="spectral", batch=16, micro_batch=16, crop_seconds=5.0, lr=2e-3,
                    warmup=200, hold=3000, decay=2800, final_lr_frac=0.1, max_steps=6000, patience=6000,
                    eval_every=500, save_every=250, val_pairs=256, codeword_init=True, pool_pairs=8192,
                    threads=2, workers=0, objective=Objective(coarse_prob=0.7),
                    # chosen on validation works for the shipped weights (docs/log.md, 2026-12-07)
                    sampling={"fine_temperature": 0.0, "temperature": 0.5, "scale_audio": 5.0}),
}


def knob_values(r: Recipe) -> dict:
    """A recipe as flat knob -> value (the objective's knobs included), as a checkpoint keeps them."""
    return {**{k: v for k, v in asdict(r).items() if k not in ("objective", "sampling")}, **asdict(r.objective)}


def recipe_values(name: str) -> dict:
    """One of RECIPES as flat knob -> value."""
    return knob_values(RECIPES[name])


def knob_fields():
    """(field, its dataclass) for every recipe knob: Recipe's own, then the objective's."""
    return [f for f in fields(Recipe) if f.name not in ("objective", "sampling")] + list(fields(Objective))
