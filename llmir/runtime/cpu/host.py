"""What the host CPU offers the kernels: LLVM's host features, the ones Numba
compiles for, so a kernel that uses an instruction only where they list it
can always select it."""

from __future__ import annotations

import platform

from llvmlite import binding as llvm


def host_has(*features: str) -> bool:
    """Whether this x86-64 CPU has every one of `features` (LLVM's names,
    such as ``"avx512vnni"`` or ``"amx-bf16"``)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    llvm.initialize_native_target()
    listed = llvm.get_host_cpu_features()
    return all(bool(listed.get(feature)) for feature in features)
