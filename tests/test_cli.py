"""cli.py: `--device auto` prefers CUDA, then Apple's MPS, then the CPU; a device that is not here is refused."""
import pytest
import torch

from cli.common import pick_device


@pytest.mark.parametrize("cuda,mps,expected", [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"),
                                               (False, False, "cpu")])
def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert pick_device("auto") == torch.device(expected)
    assert pick_device() == torch.device(expected)


@pytest.mark.parametrize("name,words", [("cuda", "no CUDA"), ("cuda:1", "no CUDA"), ("mps", "MPS"),
                                        ("gpu", "not a torch device")])
def test_a_device_not_here_is_refused_with_its_name(monkeypatch, name, words):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match=f"--device {name}: .*{words}"):
        pick_device(name)


def test_a_named_device_is_taken_as_given():
    assert pick_device("cpu") == torch.device("cpu")


def test_help_shows_real_defaults_and_leaves_unset_ones_to_the_words():
    """evaluate.py --help: a flag's default is appended when it has one; None and False (a checkpoint's value,
    the paper's, off) are not printed, so no help line reads "(default: None)"."""
    import evaluate
    text = " ".join(evaluate.build_parser().format_help().split())
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "--seed SEED seed for the examples and for sampling (default: 0)" in text
    assert "--w-s W_S eq. 1 causal-bias weight (default: 0.1)" in text       # the sampling flags, as generate.py
