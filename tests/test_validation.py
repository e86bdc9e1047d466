"""plumbing/validation.py: training's validation scores and their record."""
import torch

from training import validation


def test_constant_baseline_is_the_best_constant_guess():
    """The accuracy table's floor: each level's most frequent scored token."""
    tgt = torch.tensor([[[1, 1, 2, 3]], [[1, 2, 2, 2]]])               # [B=2, Q=1, T=4]
    loss_mask = torch.tensor([[[True, True, False, True]], [[True, True, True, False]]])
    val = {"target": tgt, "masks": [(None, loss_mask)]}
    # scored tokens: 1, 1, 3, 1, 2, 2 -> the best constant (1) is right 3 times out of 6
    assert validation.constant_baseline(val)["acc"] == 0.5
