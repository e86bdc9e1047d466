"""Checkpoints: atomic round trip, the permissions a user expects, and one clear error for a bad file."""
import os
from dataclasses import asdict

import pytest
import torch

from training.checkpoint import (DEFAULT_CHECKPOINT, CheckpointError, checkpoint_window_seconds, load_checkpoint, load_model,
                        save_checkpoint)
from model import ModelConfig, StemGen
from training import ship
import decode

CFG = ModelConfig(n_q=3, bins=32, dim=64, n_heads=4, n_layers=2, max_len=256)


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path):
    """A saved and reloaded checkpoint gives a model with identical outputs, and no temporary is left."""
    torch.manual_seed(3)
    m = StemGen(CFG).eval()
    path = tmp_path / "ck.pt"
    save_checkpoint(str(path), {"model_config": asdict(CFG), "model": m.state_dict(), "step": 7})
    m2 = StemGen.from_checkpoint(load_checkpoint(str(path)))
    g = torch.Generator().manual_seed(0)
    ctx = torch.randint(0, CFG.bins, (2, CFG.n_q, 24), generator=g)
    tgt = torch.randint(0, CFG.bins + 1, (2, CFG.n_q, 24), generator=g)
    inst = torch.tensor([0, 5])
    assert torch.equal(m(ctx, tgt, inst), m2(ctx, tgt, inst))
    assert os.listdir(tmp_path) == ["ck.pt"]


def test_checkpoint_gets_the_permissions_open_would_give(tmp_path):
    """With umask 022 a checkpoint is 0o644 (readable by others), not the temporary file's 0o600."""
    old = os.umask(0o022)
    try:
        save_checkpoint(str(tmp_path / "run" / "ckpt.pt"), {"step": 1})
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "run" / "ckpt.pt").st_mode & 0o777 == 0o644


@pytest.mark.parametrize("content,words", [(None, "checkpoint not found"), (b"not a checkpoint", "cannot read"),
                                           ({"step": 3}, "lacks model_config, model, codec_spec")])
def test_unusable_checkpoint_gives_one_clear_error(tmp_path, content, words):
    """A missing, unreadable or foreign checkpoint is refused with a message naming the problem."""
    path = tmp_path / "ck.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        save_checkpoint(str(path), content)
    with pytest.raises(CheckpointError, match=words):
        load_model(str(path))


def test_window_is_the_training_crop_when_recorded():
    """The window of a checkpoint is its training crop when train.py recorded it, else unknown (None)."""
    assert checkpoint_window_seconds({"train_args": {"crop_seconds": 12}}) == 12.0
    assert checkpoint_window_seconds({}) is None


def test_the_default_checkpoint_is_the_shipped_model_and_a_users_run_is_named(tmp_path, monkeypatch):
    """Without --checkpoint: the shipped model, wherever the command runs from; a run in runs/default/ is named,
    with the flag that chooses it."""
    from training import checkpoint
    from conftest import ROOT
    monkeypatch.chdir(tmp_path)
    path, why = checkpoint.default_checkpoint()
    assert path == checkpoint.SHIPPED_CHECKPOINT == os.path.join(ROOT, "checkpoints", "stemgen-music.pt")
    assert "your run" not in why
    save_checkpoint(DEFAULT_CHECKPOINT, {"step": 1})
    path, why = checkpoint.default_checkpoint()
    assert path == checkpoint.SHIPPED_CHECKPOINT and f"--checkpoint {DEFAULT_CHECKPOINT}" in why
    best = os.path.join(os.path.dirname(DEFAULT_CHECKPOINT), "best.pt")
    save_checkpoint(best, {"step": 1})
    assert f"--checkpoint {best}" in checkpoint.default_checkpoint()[1]


def test_a_shipped_checkpoint_keeps_the_model_in_bf16_and_drops_the_training_state():
    """shipped() halves the weights and keeps what generation reads; the model it rebuilds is the bf16 rounding
    of the original."""
    torch.manual_seed(0)
    m = StemGen(CFG).eval()
    full = {"model_config": asdict(CFG), "model": m.state_dict(), "optimizer": {"x": torch.zeros(100)},
            "rng": {}, "step": 5, "class_counts": {"Piano": 3}}
    small = ship.shipped(full, {"command": "python train.py"})
    assert "optimizer" not in small and "rng" not in small and small["provenance"]["command"] == "python train.py"
    assert all(v.dtype == torch.bfloat16 for v in small["model"].values() if v.is_floating_point())
    m2 = StemGen.from_checkpoint(small)
    for (k, a), b in zip(m.state_dict().items(), m2.state_dict().values()):
        assert b.dtype == a.dtype and torch.equal(b, a.to(torch.bfloat16).to(a.dtype)), k


def test_a_shipped_checkpoint_carries_the_sampling_it_recommends_checked():
    """shipped(..., sampling) stores the recommended knobs; only decode.Sampling's level-free knobs with values it
    accepts pass, and python -m training.ship --sampling's KNOB=VALUE words parse to the same dict."""
    from training import checkpoint
    full = {"model_config": asdict(CFG), "model": StemGen(CFG).state_dict()}
    small = ship.shipped(full, {}, {"fine_temperature": 0.0, "guidance": "joint"})
    assert checkpoint.recommended_sampling(small) == {"fine_temperature": 0.0, "guidance": "joint"}
    assert checkpoint.recommended_sampling(ship.shipped(full, {})) == {}          # none recommended
    assert decode.parse_sampling(["fine-temperature=0", "guidance=joint"]) == small["sampling"]
    for bad, words in [({"steps": (1, 1)}, "unknown sampling knobs"), ({"temperature": 0.0}, "temperature"),
                       ({"guidance": "loud"}, "guidance")]:
        with pytest.raises(checkpoint.CheckpointError, match=words):
            ship.shipped(full, {}, bad)
    for words in (["fine_temperature"], ["temperature=warm"]):
        with pytest.raises(ValueError, match="KNOB=VALUE|not a number"):
            decode.parse_sampling(words)
