"""torch <-> numpy at the seam between a transformers model and llmir's
runtime, without copies wherever the layouts allow.

Both live in CPU memory, so a tensor becomes an array by sharing its buffer
(``Tensor.numpy()``) and back (``torch.from_numpy``).  Two conversions do
copy, and say why:

* bfloat16 queries become float32: numpy has no bfloat16 and the kernels
  read queries as float32 (exact: every bf16 value is a float32 value);
* a non-contiguous tensor (one whose head and token axes are not already in
  ``[batch, T, H, D]`` order) is packed once.

bfloat16 keys and values for a bf16 cache pass as their raw bits (uint16),
which the cache copies bit for bit; keys and values of a dtype the cache does
not take as it is (float16 for an f32 or bf16 cache, bfloat16 for any other)
become float32, exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from llmir.errors import DTypeError
from llmir.runtime.dtypes import ElementType


def kv_array(states: torch.Tensor, element: ElementType) -> npt.NDArray[Any]:
    """HF's ``[batch, H, T, D]`` keys or values as a ``[batch, T, H, D]``
    array a cache of `element` accepts: as they are when it takes their
    dtype (float32 always; float16 for f16 and quantized caches; bfloat16
    as raw bits for bf16 caches), else as float32."""
    tokens_major = states.detach().transpose(1, 2)
    if tokens_major.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise DTypeError(
            f"keys and values must be float32, float16 or bfloat16, "
            f"got {tokens_major.dtype}"
        )
    accepted = element.raw_input_dtypes
    if tokens_major.dtype == torch.bfloat16 and element.name == "bf16":
        bits = tokens_major.contiguous().view(torch.int16).numpy()
        return bits.view(np.uint16)
    if tokens_major.dtype == torch.float16 and np.dtype(np.float16) in accepted:
        return np.ascontiguousarray(tokens_major.numpy())
    return np.ascontiguousarray(tokens_major.float().numpy())


def query_array(query: torch.Tensor) -> npt.NDArray[Any]:
    """HF's ``[batch, Hq, Tq, D]`` query as the ``[batch, Tq, Hq, D]`` float32
    (or float16) array paged attention reads."""
    tokens_major = query.detach().transpose(1, 2)
    if tokens_major.dtype not in (torch.float32, torch.float16):
        tokens_major = tokens_major.float()
    return np.ascontiguousarray(tokens_major.numpy())


def as_tensor(array: npt.NDArray[Any], like: torch.Tensor) -> torch.Tensor:
    """A kernel's output as a tensor of `like`'s dtype (shared when the
    dtypes agree)."""
    tensor = torch.from_numpy(array)
    return tensor if tensor.dtype == like.dtype else tensor.to(like.dtype)
