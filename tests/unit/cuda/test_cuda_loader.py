"""The CUDA backend loads lazily and fails with a clear DeviceError."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llmir.runtime import cuda as kvcuda


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )


def test_importing_llmir_loads_no_cuda() -> None:
    result = _python(
        "import sys, llmir, llmir.runtime, llmir.runtime.cuda\n"
        "assert 'numba.cuda' not in sys.modules, 'numba.cuda was imported'\n"
        "print('ok')"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_missing_gpu_raises_device_error() -> None:
    if not kvcuda.simulator_enabled():
        pytest.skip("a real GPU is present")
    result = _python(
        "from llmir.errors import DeviceError\n"
        "from llmir.runtime import PagedKVCache\n"
        "from llmir.runtime import cuda\n"
        "if cuda.is_available():\n"
        "    print('gpu')\n"
        "else:\n"
        "    try:\n"
        "        PagedKVCache(1, 1, 8, 4, 16, device='cuda')\n"
        "    except DeviceError as exc:\n"
        "        print(exc)\n"
    )
    assert result.returncode == 0, result.stderr
    if result.stdout.strip() == "gpu":
        pytest.skip("this machine has a GPU")
    assert (
        "no usable CUDA GPU" in result.stdout
        or "numba.cuda cannot be imported" in result.stdout
    )


def test_describe_names_the_target() -> None:
    text = kvcuda.describe()
    assert ("simulator" in text) == kvcuda.simulator_enabled()
