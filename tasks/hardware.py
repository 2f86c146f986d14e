"""Which device and precision a run uses: CUDA when present (bf16 where the card supports it), else CPU.

One resolver for every entry point (`tasks.train`, `tasks.table1`), so `python run.py model=lsg_norm
task=ecthr_a` trains on the GPU of a GPU machine without naming a trainer, and an explicit value
(`trainer=cpu`, `trainer.device=cpu`, `trainer.precision=fp16`, `--device cpu`) always wins.
"""

from __future__ import annotations

from lsg.validation import check_choice

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve(device: str = "auto", precision: str = "auto", *, key: str = "trainer") -> tuple[str, str]:
    """The concrete (device, precision) for the requested values.

    Args:
        device: "auto" (CUDA when available, else CPU), "cpu" or "cuda".
        precision: "auto" (bf16 on a CUDA card that supports it, else fp32), "fp32", "bf16" or "fp16".
        key: the config prefix named in errors ("trainer" -> `trainer.device`).

    Returns:
        (device, precision), each without "auto".

    Raises:
        ValueError: an unknown value, `cuda` on a machine without CUDA, or fp16 on CPU.
    """
    check_choice(f"{key}.device", device, DEVICES)
    check_choice(f"{key}.precision", precision, PRECISIONS)
    import torch  # here: tasks.config validates these names before anything imports torch

    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise ValueError(f"{key}.device=cuda but torch sees no CUDA device; use {key}.device=auto or cpu")
    if device == "auto":
        device = "cuda" if cuda else "cpu"
    if precision == "auto":
        precision = "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if device == "cpu" and precision == "fp16":
        raise ValueError(f"{key}.precision=fp16 needs {key}.device=cuda; use fp32 or bf16 on CPU")
    return device, precision
