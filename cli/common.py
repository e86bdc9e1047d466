"""What every command shares: the exit status of a user's mistake, the `--device` resolver and `--help`'s defaults.

Every script (train, generate, evaluate, bench, spectral) returns USER_ERROR when it stops on a problem the user
can fix (a missing file, a codec not fitted, a bad option value) and resolves its `--device` with `pick_device`.
"""
from __future__ import annotations

import argparse
import os
import subprocess

import torch

USER_ERROR = 2  # exit status of a command stopped by a problem the user can fix; argparse's own errors use it too


def mps_available() -> bool:
    """True when Apple's Metal (MPS) backend can run here."""
    return torch.backends.mps.is_available()


def pick_device(name: str = "auto") -> torch.device:
    """The device `--device NAME` means: "auto" is CUDA when present, else Apple's MPS, else the CPU.

    Raises ValueError for a device that is not here (cuda without CUDA, mps without MPS) or not a device name.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available here (use --device cpu)")
    if name.startswith("mps") and not mps_available():
        raise ValueError(f"--device {name}: Apple's MPS is not available here (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a torch device name (e.g. auto, cpu, cuda, cuda:1, mps)") from None


def source_commit() -> str | None:
    """The git commit of this copy of the project, or None where that cannot be told (no git, not a clone)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """--help that appends each flag's default, except None and False: such flags say in words what happens
    when they are not given (a checkpoint's value, the paper's, off)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)
