"""Data files shipped with llmir (read with `importlib.resources`):
`block_costs.json`, the measured block-size costs `llm-select-block-size`
uses (`python -m benchmarks.bench_block_size --write` rewrites it)."""
