"""Which implementation Qwen3.5's linear-attention layers call, and the switch back to PyTorch's.

transformers binds four functions once, when ``modeling_qwen3_5`` is imported
(``use_kernel_func_from_hub_with_fallback``): flash-linear-attention's and causal-conv1d's
kernels when those packages import, else its own PyTorch code. The layers look the four names
up in that module at every call, so rebinding the names switches every loaded model at once.
A fast kernel that imports but fails on the host (a Triton build that does not compile there)
would otherwise fail every job; the worker's warm-up and the GPU bench switch back instead.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")

# name in modeling_qwen3_5 -> the package whose kernel transformers binds to it
KERNEL_FUNCTIONS = {
    "torch_chunk_gated_delta_rule": "fla",
    "torch_recurrent_gated_delta_rule": "fla",
    "causal_conv1d_fn": "causal_conv1d",
    "causal_conv1d_update": "causal_conv1d",
}
DISTRIBUTIONS = {"fla": ("flash-linear-attention", "fla-core"), "causal_conv1d": ("causal-conv1d",)}


def _module() -> Any:
    from transformers.models.qwen3_5 import modeling_qwen3_5

    return modeling_qwen3_5


def bound_package(func: Any) -> str | None:
    """The package whose kernel the wrapper ``func`` calls; None for transformers' PyTorch code.

    The wrapper keeps its implementation in its closure as ``implementation``; a name rebound
    by ``use_torch_kernels`` is the PyTorch function itself, without a ``__wrapped__``."""
    if not hasattr(func, "__wrapped__"):
        return None
    try:
        implementation = inspect.getclosurevars(func).nonlocals.get("implementation")
    except TypeError:
        return None
    package = str(getattr(implementation, "__module__", "")).split(".")[0]
    return package if package in DISTRIBUTIONS else None


def _installed(package: str) -> str | None:
    for dist in DISTRIBUTIONS[package]:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def kernel_status() -> dict[str, dict[str, Any]]:
    """Per package: its installed version (None if absent) and whether the layers call it."""
    module = _module()
    return {package: {"installed": _installed(package),
                      "in_use": any(bound_package(getattr(module, name)) == package
                                    for name, owner in KERNEL_FUNCTIONS.items() if owner == package)}
            for package in DISTRIBUTIONS}


def fast_kernels_in_use() -> bool:
    return any(status["in_use"] for status in kernel_status().values())


def use_torch_kernels() -> None:
    """Point the four names back at transformers' own PyTorch functions, whatever is installed."""
    module = _module()
    for name in KERNEL_FUNCTIONS:
        setattr(module, name, inspect.unwrap(getattr(module, name)))


def retry_with_torch_kernels(work: Callable[[], T], *, reset: Callable[[], None]) -> tuple[T, str | None]:
    """``work()``; if it fails while fast kernels are in use, and not for lack of memory, switch
    to PyTorch's, ``reset()`` (e.g. drop graphs captured around the failed kernels) and run it
    again. Returns its result and the first failure's traceback (None if there was none); any
    other failure, or a second one, is raised."""
    try:
        return work(), None
    except Exception as exc:
        out_of_memory = isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()
        if out_of_memory or not fast_kernels_in_use():
            raise
        error = traceback.format_exc()[-2000:]
        log.error("fast linear-attention kernels failed; using PyTorch's instead (correct, much slower): %r", exc)
    use_torch_kernels()
    reset()
    return work(), error
