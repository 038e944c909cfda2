"""Defaults shared by the package's trainer configs."""

import torch


def resolve_bf16(bf16: bool | None, fp16: bool, use_cpu: bool = False) -> bool:
    """TRL turns bf16 on whenever it is unset, which fails on machines without bf16 support; we turn it on only
    where it runs (a bf16-capable GPU), so one config serves a laptop CPU and a GPU node alike. An explicit value
    always wins."""
    if bf16 is not None:
        return bf16
    if fp16 or use_cpu:
        return False
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
