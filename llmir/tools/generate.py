"""`llmir-generate`: text generation with llmir as the KV cache and attention
of a Hugging Face transformers model, continuously batched.

    llmir-generate --random-model llama-tiny --prompt "1 2 3" --max-new-tokens 16
    llmir-generate --model ./my-checkpoint --prompts prompts.txt --kv-dtype f16
    llmir-generate --random-model qwen2-tiny --num-prompts 8 --compare-hf
    llmir-generate --random-model gemma2-tiny --via-ir       # attention via IR
    llmir-generate --random-model llama-tiny --emit-ir | xdsl-opt -p convert-llm-to-func

Needs the ``hf`` extra (torch, transformers).  Prompts are text when the
model has a tokenizer, otherwise whitespace-separated token ids.  Every bad
input ends with exit status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

EXIT_ERROR = 2
EXIT_MISMATCH = 1
PROG = "llmir-generate"


class UsageError(Exception):
    """A bad command line or input file: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line (exit 2) instead of the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{PROG}: error: {message}\n")


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=(
            "Generate with a transformers model whose KV cache and attention "
            "are llmir's (paged blocks, continuous batching)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="DIR", help="a local checkpoint")
    source.add_argument(
        "--random-model",
        metavar="NAME",
        help="a seeded random model: llama-tiny, mistral-tiny, qwen2-tiny, "
        "gemma2-tiny, llama-small, llama-medium",
    )
    parser.add_argument(
        "--seed", type=_non_negative, default=0, help="model and prompt seed"
    )
    parser.add_argument(
        "--dtype", choices=("f32", "bf16"), default="f32", help="model weights"
    )
    prompts = parser.add_argument_group("prompts")
    prompts.add_argument("--prompt", action="append", default=[], metavar="TEXT")
    prompts.add_argument("--prompts", metavar="FILE", help="one prompt per line")
    prompts.add_argument(
        "--num-prompts",
        type=int,
        default=4,
        help="random prompts when none is given (default 4)",
    )
    prompts.add_argument(
        "--prompt-lens",
        default="8:64",
        metavar="MIN:MAX",
        help="lengths of random prompts, drawn evenly (default 8:64)",
    )
    gen = parser.add_argument_group("generation")
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.add_argument("--batch", type=int, default=16, help="max running requests")
    gen.add_argument(
        "--max-prefill-tokens",
        type=int,
        default=512,
        help="prompt tokens computed per step (chunked prefill)",
    )
    gen.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument(
        "--ignore-eos", action="store_true", help="always generate max-new-tokens"
    )
    kv = parser.add_argument_group("KV cache")
    kv.add_argument(
        "--kv-dtype", choices=("f32", "f16", "bf16", "i8", "i4"), default="f32"
    )
    kv.add_argument("--block-size", type=int, default=16)
    pool = kv.add_mutually_exclusive_group()
    pool.add_argument("--num-blocks", type=int)
    pool.add_argument("--kv-memory", metavar="BYTES", help="e.g. 256MiB")
    kv.add_argument("--prefix-caching", action="store_true")
    kv.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    out = parser.add_argument_group("output")
    out.add_argument("--ids", action="store_true", help="print token ids")
    out.add_argument(
        "--compare-hf",
        action="store_true",
        help="also run transformers' generate (padded batch) and compare",
    )
    out.add_argument(
        "--via-ir",
        action="store_true",
        help="run attention through the model's llm IR under the interpreter",
    )
    out.add_argument(
        "--emit-ir", action="store_true", help="print the model's llm IR and exit"
    )
    out.add_argument("--plot", metavar="PATH", help="KV memory over the run (png)")
    out.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar (default: when stderr is a terminal)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    try:
        return _run(options)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from llmir.errors import LLMIRError

        if os.environ.get("LLMIR_TRACEBACK"):
            raise
        expected = isinstance(e, LLMIRError | UsageError | OSError | ValueError)
        kind = "error" if expected else f"internal error: {type(e).__name__}"
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"{PROG}: {kind}: {text}", file=sys.stderr)
        return EXIT_ERROR


def _run(options: argparse.Namespace) -> int:
    for module in ("torch", "transformers"):
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"{PROG} needs {module}: pip install 'llmir[hf]'")
    if options.device != "cpu":
        raise UsageError(
            "--device cuda: the transformers integration runs its model and "
            "cache on the CPU for now (llmir's CUDA cache is reachable from "
            "the Python API and llmir-run)"
        )
    for name in ("max_new_tokens", "batch", "max_prefill_tokens", "block_size"):
        if getattr(options, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    # Checks that would otherwise fail only after the whole run.
    if options.compare_hf and options.temperature:
        raise UsageError("--compare-hf compares greedy runs: drop --temperature")
    if options.plot:
        folder = Path(options.plot).resolve().parent
        if not folder.is_dir():
            raise UsageError(f"--plot {options.plot}: no directory {folder}")
    # torch first: its OpenMP runtime must start before Numba's threads.
    import torch

    from llmir.integrations.transformers.models import random_model

    dtype = torch.bfloat16 if options.dtype == "bf16" else torch.float32
    tokenizer = None
    if options.random_model:
        model = random_model(options.random_model, seed=options.seed, dtype=dtype)
    else:
        model, tokenizer = _load_checkpoint(Path(options.model), dtype)
    if options.emit_ir:
        from llmir.frontend import layer_step_ir

        sys.stdout.write(
            layer_step_ir(
                model.config, kv_dtype=options.kv_dtype, block_size=options.block_size
            )
        )
        return 0
    prompts = _prompts(
        options, tokenizer, int(model.config.get_text_config().vocab_size)
    )
    return _generate(options, model, tokenizer, prompts)


def _load_checkpoint(path: Path, dtype: Any) -> tuple[Any, Any]:
    if not path.is_dir():
        raise UsageError(f"--model {path}: not a directory")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation="eager", local_files_only=True
    ).eval()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError):
        tokenizer = None  # no tokenizer: prompts and outputs are token ids
    return model, tokenizer


def _prompts(
    options: argparse.Namespace, tokenizer: Any, vocab: int
) -> list[list[int]]:
    texts: list[str] = list(options.prompt)
    if options.prompts:
        lines = Path(options.prompts).read_text(encoding="utf-8").splitlines()
        found = [line for line in lines if line.strip()]
        if not found:
            raise UsageError(f"--prompts {options.prompts}: no prompt in the file")
        texts += found
    if texts:
        return [_encode(text, tokenizer, vocab) for text in texts]
    import numpy as np

    low, high = _range(options.prompt_lens)
    if options.num_prompts < 1:
        raise UsageError("--num-prompts must be >= 1")
    rng = np.random.default_rng(options.seed)
    lens = np.linspace(low, high, options.num_prompts).round().astype(int)
    return [rng.integers(0, vocab, int(n)).tolist() for n in lens]


def _range(text: str) -> tuple[int, int]:
    try:
        low, high = (int(part) for part in text.split(":"))
    except ValueError:
        raise UsageError(f"--prompt-lens {text!r}: write MIN:MAX, e.g. 8:64") from None
    if not 1 <= low <= high:
        raise UsageError(f"--prompt-lens {text!r}: need 1 <= MIN <= MAX")
    return low, high


def _encode(text: str, tokenizer: Any, vocab: int) -> list[int]:
    if tokenizer is not None:
        ids = list(tokenizer(text)["input_ids"])
    else:
        try:
            ids = [int(word) for word in text.split()]
        except ValueError:
            raise UsageError(
                f"prompt {text[:40]!r}: without a tokenizer, prompts are token ids "
                "separated by spaces"
            ) from None
    if not ids:
        raise UsageError("an empty prompt")
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise UsageError(f"token id {bad[0]} is outside the vocabulary [0, {vocab})")
    return ids


def _generate(
    options: argparse.Namespace, model: Any, tokenizer: Any, prompts: list[list[int]]
) -> int:
    from llmir.integrations.transformers.engine import Engine, Request
    from llmir.integrations.transformers.sampling import SamplingParams
    from llmir.runtime.memory import parse_bytes

    step_fn = None
    if options.via_ir:
        from llmir.frontend import IRLayerStep

        if options.prefix_caching:
            raise UsageError("--via-ir does not index prefixes: drop --prefix-caching")
        step_fn = IRLayerStep(
            model.config, kv_dtype=options.kv_dtype, block_size=options.block_size
        )
    num_blocks = options.num_blocks
    kv_memory = parse_bytes(options.kv_memory) if options.kv_memory else None
    if num_blocks is None and kv_memory is None:
        # Enough for every request at once, whole blocks.
        block = options.block_size
        num_blocks = sum(
            -(-(len(p) + options.max_new_tokens) // block) for p in prompts
        )
    engine_kwargs: dict[str, Any] = {}
    if step_fn is not None:
        engine_kwargs["step"] = step_fn
    engine = Engine(
        model,
        kv_dtype=options.kv_dtype,
        block_size=options.block_size,
        num_blocks=num_blocks,
        kv_memory=kv_memory,
        prefix_caching=options.prefix_caching,
        max_batch=options.batch,
        max_prefill_tokens=options.max_prefill_tokens,
        **engine_kwargs,
    )
    eos = model.generation_config.eos_token_id
    stops: tuple[int, ...] = ()
    if eos is not None and not options.ignore_eos:
        stops = (eos,) if isinstance(eos, int) else tuple(eos)
    sampling = SamplingParams(
        temperature=options.temperature,
        top_k=options.top_k,
        top_p=options.top_p,
        seed=options.seed,
    )
    requests = [
        Request(
            i,
            prompt,
            max_new_tokens=options.max_new_tokens,
            sampling=SamplingParams(
                sampling.temperature, sampling.top_k, sampling.top_p, sampling.seed + i
            ),
            stop_token_ids=stops,
        )
        for i, prompt in enumerate(prompts)
    ]
    progress = options.progress if options.progress is not None else sys.stderr.isatty()
    done = engine.run(requests, progress=progress)
    for i in range(len(prompts)):
        completion = done[i]
        text = _decode(completion.tokens, tokenizer, options.ids)
        cached = (
            f", {completion.cached_prompt_tokens} from the prefix cache"
            if options.prefix_caching
            else ""
        )
        print(f"[{i}] prompt {completion.prompt_len} tokens{cached} -> {text}")
    stats = engine.stats
    ttft = [done[i].first_token_s * 1e3 for i in done]
    print(
        f"prefill: {stats.prefill_tokens} tokens, "
        f"{stats.prefill_tokens_per_s:.1f} tok/s | decode: {stats.decode_tokens} "
        f"tokens, {stats.decode_tokens_per_s:.1f} tok/s"
        f" | time to first token: mean {sum(ttft) / len(ttft):.1f} ms, "
        f"max {max(ttft):.1f} ms"
    )
    print(
        f"KV memory (peak): llmir paged {_mib(stats.peak_kv_bytes)} "
        f"({stats.peak_tokens_held} tokens, {options.kv_dtype}); "
        f"a padded contiguous cache of the same requests "
        f"{_mib(stats.peak_contiguous_bytes)} ({model.dtype})"
    )
    if options.plot:
        _plot(options.plot, stats)
    if options.compare_hf:
        return _compare(options, model, prompts, done, tokenizer)
    return 0


def _compare(
    options: argparse.Namespace,
    model: Any,
    prompts: list[list[int]],
    done: dict[int, Any],
    tokenizer: Any,
) -> int:
    from llmir.integrations.transformers.compare import hf_generate

    attn = "eager" if model.config.model_type == "gemma2" else "sdpa"
    run = hf_generate(
        model,
        prompts,
        options.max_new_tokens,
        attn_implementation=attn,
        stop_at_eos=not options.ignore_eos,
    )
    agree = 0
    for i, theirs in enumerate(run.tokens):
        ours = done[i].tokens
        same = ours == theirs
        agree += same
        mark = "same" if same else "DIFFERENT"
        print(
            f"[{i}] transformers ({attn}, padded batch): {mark} -> "
            f"{_decode(theirs, tokenizer, options.ids)}"
        )
    print(
        f"transformers generate: {run.seconds:.2f} s, time to first token "
        f"{run.first_token_s * 1e3:.1f} ms, KV cache {_mib(run.kv_bytes)}"
    )
    print(f"greedy tokens agree: {agree}/{len(prompts)} requests")
    return 0 if agree == len(prompts) else EXIT_MISMATCH


def _decode(tokens: list[int], tokenizer: Any, as_ids: bool) -> str:
    if tokenizer is None or as_ids:
        return " ".join(str(t) for t in tokens)
    return repr(tokenizer.decode(tokens))


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def _plot(path: str, stats: Any) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib: pip install 'llmir[plot]'")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s.step for s in stats.timeline]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [s.paged_bytes / 2**20 for s in stats.timeline], label="llmir paged")
    ax.plot(
        steps,
        [s.contiguous_bytes / 2**20 for s in stats.timeline],
        label="padded contiguous (same requests)",
    )
    ax.set_xlabel("engine step")
    ax.set_ylabel("KV cache MiB")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"plot: {path}")


if __name__ == "__main__":
    sys.exit(main())
