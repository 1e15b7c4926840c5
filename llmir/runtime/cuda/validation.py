"""Host-side checks of the CUDA launchers, run before anything is copied or
launched (block tables are checked by `llmir.runtime.validation`).

A kernel indexing the pool with a bad slot would write someone else's memory
on a GPU (and raise inside the kernel in the simulator), so slot mappings
are checked here, in numpy.  Errors name the bad value and the limit.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from llmir.errors import BlockTableError, DTypeError, ShapeError


def check_slot_mapping(
    slot_mapping: npt.ArrayLike, *, num_slots: int
) -> npt.NDArray[np.int32]:
    """Validate slots (``block * block_size + offset``, or -1 to skip a token);
    return them as C-contiguous int32."""
    slots = np.asarray(slot_mapping)
    if slots.ndim != 1:
        raise ShapeError(f"slot_mapping must be 1-D, got shape {slots.shape}")
    if slots.size and not np.issubdtype(slots.dtype, np.integer):
        raise DTypeError(f"slot_mapping must hold integers, got {slots.dtype}")
    bad = np.flatnonzero((slots < -1) | (slots >= num_slots))
    if bad.size:
        t = int(bad[0])
        raise BlockTableError(
            f"slot_mapping[{t}] = {int(slots[t])} is out of range, "
            f"the pool has {num_slots} slots (-1 skips a token)"
        )
    return np.ascontiguousarray(slots, dtype=np.int32)
