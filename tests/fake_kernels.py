"""A fast linear-attention kernel that imports but fails, as a Triton build that does not
compile on the host would, bound the way transformers binds flash-linear-attention's."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import pytest

from services.models.kernels import KERNEL_FUNCTIONS


def failing_fla(torch_function: Any) -> Any:
    """A wrapper like transformers' around an installed fla kernel; the kernel raises."""
    def implementation(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("triton: PassManager::run failed")
    implementation.__module__ = "fla.ops.gated_delta_rule.chunk"

    @functools.wraps(torch_function)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return implementation(*args, **kwargs)
    return wrapped


def keep_kernel_bindings(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Restore the four bindings after the test, whatever it rebinds; returns the module."""
    from transformers.models.qwen3_5 import modeling_qwen3_5 as qwen

    for name in KERNEL_FUNCTIONS:
        monkeypatch.setattr(qwen, name, getattr(qwen, name))
    return qwen


def break_fla(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Bind the failing kernel to the prefill's delta rule; returns the PyTorch function."""
    qwen = keep_kernel_bindings(monkeypatch)
    torch_chunk = inspect.unwrap(qwen.torch_chunk_gated_delta_rule)
    monkeypatch.setattr(qwen, "torch_chunk_gated_delta_rule", failing_fla(torch_chunk))
    return torch_chunk
