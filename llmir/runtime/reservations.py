"""The slot reservations a cache handed out (`PagedKVCache.reserve_slots`)
and whether it still trusts them.

A reservation is the read-only ``[L, batch, T]`` slot array returned to the
caller; `write_kv` given exactly that object skips the slot checks.  That
trust ends when a block it reserved leaves its sequence (the sequence is
freed or swapped out, or pruning gives the block back, or the cache is
reset): the block may belong to another sequence by the time the caller
writes, which no slot check can tell, so writing a revoked reservation is
refused.  Every reservation the caller still holds is tracked (weakly: a
dropped array is forgotten), not only the last one.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int32]


@dataclass
class Reservation:
    slots: weakref.ref[IntArray]
    seq_ids: npt.NDArray[np.int64]
    written: npt.NDArray[np.bool_]
    """Per layer: whether `write_kv` filled it (through this object)."""


class Reservations:
    """Trusted and revoked reservations of one cache (under its lock)."""

    def __init__(self, num_layers: int, block_size: int) -> None:
        self._num_layers = num_layers
        self._block_size = block_size
        self._live: dict[int, Reservation] = {}
        self._revoked: weakref.WeakValueDictionary[int, IntArray] = (
            weakref.WeakValueDictionary()
        )

    def add(self, slots: IntArray, seq_ids: npt.NDArray[np.int64]) -> None:
        """Trust `slots` (the object handed out) for `seq_ids`."""
        self._live = {k: r for k, r in self._live.items() if r.slots() is not None}
        nothing_to_write = slots.size == 0
        self._live[id(slots)] = Reservation(
            weakref.ref(slots), seq_ids, np.full(self._num_layers, nothing_to_write)
        )

    def trusted(self, slots: object) -> Reservation | None:
        entry = self._live.get(id(slots))
        return entry if entry is not None and entry.slots() is slots else None

    def is_revoked(self, slots: object) -> bool:
        return self._revoked.get(id(slots)) is slots

    def revoke_for(self, seq_ids: npt.NDArray[np.int64]) -> None:
        """`seq_ids` gave back every block (freed, swapped out): revoke the
        reservations that include any of them."""
        for key, entry in list(self._live.items()):
            if np.intersect1d(entry.seq_ids, seq_ids).size:
                self._revoke(key, entry)

    def revoke_unheld(
        self,
        seq_ids: npt.NDArray[np.int64],
        table_of: Callable[[npt.NDArray[np.int64]], IntArray | None],
    ) -> None:
        """`seq_ids` gave back some blocks (pruning): revoke the reservations
        of theirs with a slot in a block its sequence no longer holds.
        `table_of` gives the block table of sequences, None if one is gone."""
        for key, entry in list(self._live.items()):
            if not np.intersect1d(entry.seq_ids, seq_ids).size:
                continue
            slots, table = entry.slots(), table_of(entry.seq_ids)
            if slots is not None and table is not None:
                blocks = slots // self._block_size  # [L, batch, T]
                held = (blocks[..., None] == table[None, :, None, :]).any(axis=-1)
                if held.all():
                    continue
            self._revoke(key, entry)

    def revoke_all(self) -> None:
        for key, entry in list(self._live.items()):
            self._revoke(key, entry)

    def pending_write(
        self, seq_ids: npt.NDArray[np.int64]
    ) -> tuple[int, list[int]] | None:
        """The first of `seq_ids` with reserved slots some layer has not
        written yet, and those layers; None if there is none."""
        for entry in self._live.values():
            if entry.slots() is None or entry.written.all():
                continue
            common = np.intersect1d(seq_ids, entry.seq_ids)
            if common.size:
                return int(common[0]), np.flatnonzero(~entry.written).tolist()
        return None

    def _revoke(self, key: int, entry: Reservation) -> None:
        slots = entry.slots()
        if slots is not None:
            self._revoked[key] = slots
        del self._live[key]
