"""The llmir runtime: paged KV cache memory management and CPU kernels."""
