"""llmir: an xDSL compiler frontend and runtime for the paged KV cache of LLM
inference."""

__version__ = "0.1.0"
