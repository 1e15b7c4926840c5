"""The transformers integration's tests need the ``hf`` extra; without it
they are skipped (CI installs it)."""

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
