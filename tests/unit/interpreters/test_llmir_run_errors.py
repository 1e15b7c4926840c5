"""Every bad input to `llmir-run` ends with exit status 2 and one line on
stderr naming the problem (a parse error's line gives file:line:col and is
followed by the source line and a caret), never a traceback.

The cases are a table: each builds its files in a temporary folder, runs
`main`, and checks the status, the line count and the message.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from run_output import stderr_lines

from llmir.tools.run import main

CACHE = "!llm.paged_kv_cache<f32, 2, 2, 4, 4, 16>"

GOOD = """
!cache = CACHE
func.func @main(%k : tensor<2x3x2x4xf32>, %q : tensor<2x1x4x4xf32>)
    -> (tensor<2x1x4x4xf32>, tensor<2xi32>) {
  %ids = arith.constant dense<[5, 6]> : tensor<2xi32>
  %c = llm.create_kv_cache {num_blocks = NUM_BLOCKS : i64} : !cache
  %c1, %idx = llm.append_kv %c, %k, %k, %ids {APPEND}
      : (!cache, tensor<2x3x2x4xf32>, tensor<2x3x2x4xf32>, tensor<2xi32>)
      -> (!cache, tensor<2x3xi32>)
  %t, %l = llm.block_table %c1, %ids
      : (!cache, tensor<2xi32>) -> (tensor<2x4xi32>, tensor<2xi32>)
  %o = llm.paged_attention %q, %c1, %t, %l {ATTN}
      : (tensor<2x1x4x4xf32>, !cache, tensor<2x4xi32>, tensor<2xi32>)
      -> tensor<2x1x4x4xf32>
  func.return %o, %l : tensor<2x1x4x4xf32>, tensor<2xi32>
}
"""


def program(
    cache: str = CACHE, num_blocks: int = 8, append: str = "", attn: str = ""
) -> str:
    return (
        GOOD.replace("CACHE", cache)
        .replace("NUM_BLOCKS", str(num_blocks))
        .replace("{APPEND}", f"{{{append}}}" if append else "")
        .replace("{ATTN}", f"{{{attn}}}" if attn else "")
    )


def body(text: str, signature: str = "", results: str = "") -> str:
    """A @main with `text` as its body."""
    out = f" -> ({results})" if results else ""
    return f"!cache = {CACHE}\nfunc.func @main({signature}){out} {{\n{text}\n}}\n"


@dataclass
class Case:
    id: str
    args: list[str]
    message: str
    files: dict[str, str | bytes] = field(default_factory=dict[str, str | bytes])
    arrays: dict[str, np.ndarray] = field(default_factory=dict[str, np.ndarray])
    setup: Callable[[Path], None] | None = None
    excerpt: bool = False
    """A parse error: two more lines (the source and the caret) follow."""


RANDOM = ["--random-args", "0"]
F32 = np.float32

CASES: list[Case] = [
    # -- reading the input ------------------------------------------------------
    Case("missing file", ["{tmp}/missing.mlir"], "cannot read {tmp}/missing.mlir"),
    Case("directory", ["{tmp}"], "cannot read {tmp}: Is a directory"),
    Case(
        "binary file",
        ["bin.mlir"],
        "is not UTF-8 text: byte 0xff at offset 2",
        files={"bin.mlir": b"\x00\x01\xff\xfe\x00"},
    ),
    Case(
        "latin-1 text",
        ["l.mlir"],
        "is not UTF-8 text: byte 0xe9",
        files={"l.mlir": "// caf\xe9\n".encode("latin-1")},
    ),
    Case(
        "empty file",
        ["e.mlir"],
        "e.mlir:1:1: Could not parse entire input",
        files={"e.mlir": ""},
        excerpt=True,
    ),
    Case(
        "broken symlink",
        ["link.mlir"],
        "cannot read",
        setup=lambda d: os.symlink(d / "nowhere", d / "link.mlir"),
    ),
    # -- parsing: file:line:col and the source line with a caret ------------------
    Case(
        "garbage",
        ["g.mlir"],
        "g.mlir:1:7: Operation hello is not registered",
        files={"g.mlir": "hello world\n"},
        excerpt=True,
    ),
    Case(
        "missing attribute",
        ["a.mlir"],
        "a.mlir:2:23: attribute expected",
        files={"a.mlir": "func.func @main() {\n  %x = arith.constant : i32\n}\n"},
        excerpt=True,
    ),
    Case(
        "unknown llm op",
        ["u.mlir"],
        "u.mlir:3:23: Operation llm.frobnicate is not registered",
        excerpt=True,
        files={"u.mlir": body("  %c = llm.frobnicate : !cache\n  func.return")},
    ),
    Case(
        "unknown type",
        ["t.mlir"],
        "t.mlir:1:",
        excerpt=True,
        files={"t.mlir": "func.func @main(%x : !llm.bogus) {\n  func.return\n}\n"},
    ),
    Case(
        "short cache type",
        ["s.mlir"],
        "s.mlir:1:",
        excerpt=True,
        files={
            "s.mlir": "func.func @main(%x : !llm.paged_kv_cache<f16, 1, 2>) {\n"
            "  func.return\n}\n"
        },
    ),
    Case(
        "unterminated function",
        ["f.mlir"],
        "f.mlir:",
        excerpt=True,
        files={"f.mlir": "func.func @main() {\n  func.return\n"},
    ),
    Case(
        "deeply nested IR",
        ["n.mlir"],
        "nests too deeply or calls itself",
        files={"n.mlir": "builtin.module {" * 3000 + "}" * 3000},
    ),
    Case(
        "calls itself",
        ["r.mlir"],
        "nests too deeply or calls itself",
        files={
            "r.mlir": "func.func @main() -> i32 {\n"
            "  %x = func.call @main() : () -> i32\n"
            "  func.return %x : i32\n}\n"
        },
    ),
    # -- verification -----------------------------------------------------------------
    Case(
        "element type i16",
        ["p.mlir", *RANDOM],
        "element type must be f32, f16, bf16, i8 or i4",
        files={"p.mlir": program(cache="!llm.paged_kv_cache<i16, 2, 2, 4, 4, 16>")},
    ),
    Case(
        "zero layers",
        ["p.mlir", *RANDOM],
        "num_layers must be in [1, 2147483647]",
        files={"p.mlir": program(cache="!llm.paged_kv_cache<f32, 0, 2, 4, 4, 16>")},
    ),
    Case(
        "2^70 layers",
        ["p.mlir", *RANDOM],
        "got 1180591620717411303424",
        files={
            "p.mlir": program(
                cache="!llm.paged_kv_cache<f32, 1180591620717411303424, 2, 4, 4, 16>"
            )
        },
    ),
    Case(
        "max_seq_len 2^40",
        ["p.mlir", *RANDOM],
        "max_seq_len must be in",
        files={
            "p.mlir": program(
                cache="!llm.paged_kv_cache<f32, 2, 2, 4, 4, 1099511627776>"
            )
        },
    ),
    Case(
        "block 12",
        ["p.mlir", *RANDOM],
        "block_size must be a power of two",
        files={"p.mlir": program(cache="!llm.paged_kv_cache<f32, 2, 2, 4, 12, 24>")},
    ),
    Case(
        "max_seq_len not a multiple",
        ["p.mlir", *RANDOM],
        "must be a multiple",
        files={"p.mlir": program(cache="!llm.paged_kv_cache<f32, 2, 2, 4, 4, 18>")},
    ),
    Case(
        "block bytes past 2^63",
        ["p.mlir", *RANDOM],
        "would exceed 2^63 bytes",
        files={
            "p.mlir": program(
                cache="!llm.paged_kv_cache<f32, 2147483647, 2147483647, 4, 4, 16>"
            )
        },
    ),
    Case(
        "num_blocks 0",
        ["p.mlir", *RANDOM],
        "num_blocks must be positive",
        files={"p.mlir": program(num_blocks=0)},
    ),
    Case(
        "layer out of range",
        ["p.mlir", *RANDOM],
        "layer 2 out of range",
        files={"p.mlir": program(append="layer = 2 : i32")},
    ),
    Case(
        "negative layer",
        ["p.mlir", *RANDOM],
        "layer -1 out of range",
        files={"p.mlir": program(attn="layer = -1 : i32")},
    ),
    Case(
        "block_size attribute",
        ["p.mlir", *RANDOM],
        "block_size 8 does not match",
        files={"p.mlir": program(append="block_size = 8 : i32")},
    ),
    Case(
        "scale 0",
        ["p.mlir", *RANDOM],
        "scale must be a finite positive number",
        files={"p.mlir": program(attn="scale = 0.0 : f32")},
    ),
    Case(
        "scale inf",
        ["p.mlir", *RANDOM],
        "got inf",
        files={"p.mlir": program(attn="scale = 0x7F800000 : f32")},
    ),
    Case(
        "scale nan",
        ["p.mlir", *RANDOM],
        "got nan",
        files={"p.mlir": program(attn="scale = 0x7FC00000 : f32")},
    ),
    Case(
        "scale 1e38",
        ["p.mlir", *RANDOM],
        "outside the float32 range",
        files={"p.mlir": program(attn="scale = 1.0e38 : f32")},
    ),
    Case(
        "window 0",
        ["p.mlir", *RANDOM],
        "sliding_window must be an integer in",
        files={"p.mlir": program(attn="sliding_window = 0 : i32")},
    ),
    Case(
        "soft cap inf",
        ["p.mlir", *RANDOM],
        "logits_soft_cap must be a finite",
        files={"p.mlir": program(attn="logits_soft_cap = 0x7F800000 : f32")},
    ),
    Case(
        "soft cap negative",
        ["p.mlir", *RANDOM],
        "logits_soft_cap must be a finite",
        files={"p.mlir": program(attn="logits_soft_cap = -1.0 : f32")},
    ),
    Case(
        "num_heads attribute",
        ["p.mlir", *RANDOM],
        "num_heads 2 does not match",
        files={"p.mlir": program(attn="num_heads = 2 : i32")},
    ),
    Case(
        "query heads",
        ["q.mlir", *RANDOM],
        "not a multiple of cache num_heads",
        files={
            "q.mlir": program().replace("tensor<2x1x4x4xf32>", "tensor<2x1x3x4xf32>")
        },
    ),
    Case(
        "table too wide",
        ["w.mlir", *RANDOM],
        "block_table width 8 exceeds",
        files={"w.mlir": program().replace("tensor<2x4xi32>", "tensor<2x8xi32>")},
    ),
    Case(
        "ids of i64",
        ["i.mlir", *RANDOM],
        "element type must be i32, got i64",
        files={
            "i.mlir": program()
            .replace("tensor<2xi32>", "tensor<2xi64>")
            .replace("dense<[5, 6]>", "dense<[5, 6]>")
        },
    ),
    Case(
        "superseded cache version",
        ["v.mlir", *RANDOM],
        "after llm.append_kv superseded it",
        files={
            "v.mlir": program().replace("llm.block_table %c1", "llm.block_table %c")
        },
    ),
    Case(
        "two writers",
        ["v2.mlir", *RANDOM],
        "is written by both",
        files={
            "v2.mlir": body(
                "  %ids = arith.constant dense<[1]> : tensor<1xi32>\n"
                "  %c = llm.create_kv_cache {num_blocks = 4 : i64} : !cache\n"
                "  %a, %ia = llm.append_kv %c, %k, %k, %ids : (!cache, tensor<1x1x2x4xf32>,"
                " tensor<1x1x2x4xf32>, tensor<1xi32>) -> (!cache, tensor<1x1xi32>)\n"
                "  %b, %ib = llm.append_kv %c, %k, %k, %ids : (!cache, tensor<1x1x2x4xf32>,"
                " tensor<1x1x2x4xf32>, tensor<1xi32>) -> (!cache, tensor<1x1xi32>)\n"
                "  func.return",
                "%k : tensor<1x1x2x4xf32>",
            )
        },
    ),
    Case(
        "not interpretable",
        ["x.mlir"],
        "cannot run the program: Could not find",
        files={
            "x.mlir": "func.func @main() -> tensor<2xf32> {\n"
            "  %x = tensor.empty() : tensor<2xf32>\n"
            "  %y = math.absf %x : tensor<2xf32>\n"
            "  func.return %y : tensor<2xf32>\n}\n"
        },
    ),
    # -- the pass pipeline ----------------------------------------------------------
    Case(
        "unknown pass",
        ["p.mlir", "-p", "no-such-pass"],
        "Unrecognized passes",
        files={"p.mlir": program()},
    ),
    Case(
        "unclosed options",
        ["p.mlir", "-p", "convert-llm-to-func{"],
        "Expected argument name here (at column 21)",
        files={"p.mlir": program()},
    ),
    Case(
        "unknown option",
        ["p.mlir", "-p", "llm-kv-cache-stats{bogus=1}"],
        "bogus",
        files={"p.mlir": program()},
    ),
    Case(
        "stray comma",
        ["p.mlir", "-p", "convert-llm-to-func,,"],
        "-p",
        files={"p.mlir": program()},
    ),
    Case(
        "budget below one sequence",
        ["p.mlir", "-p", "llm-plan-kv-memory{budget=1KB}", *RANDOM],
        "pass failed: llm-plan-kv-memory: a budget of 1000 B (1000 bytes) cannot "
        "hold one sequence of 16 tokens",
        files={"p.mlir": program()},
    ),
    Case(
        "unreadable budget",
        ["p.mlir", "-p", "llm-plan-kv-memory{budget=lots}", *RANDOM],
        "cannot read 'lots' as a byte count",
        files={"p.mlir": program()},
    ),
    # -- the function and its arguments --------------------------------------------
    Case(
        "missing symbol",
        ["p.mlir", "--symbol", "nope", *RANDOM],
        "no function @nope with a body",
        files={"p.mlir": program()},
    ),
    Case(
        "a declaration",
        [
            "p.mlir",
            "-p",
            "convert-llm-to-func",
            "--symbol",
            "llmir_block_table",
            *RANDOM,
        ],
        "no function @llmir_block_table with a body",
        files={"p.mlir": program()},
    ),
    Case(
        "too few arguments",
        ["p.mlir"],
        "takes 2 arguments, 0 were given",
        files={"p.mlir": program()},
    ),
    Case(
        "too many inputs",
        ["p.mlir", "--input", "k.npy", "--input", "k.npy", "--input", "k.npy"],
        "takes 2 arguments, 3 were given",
        files={"p.mlir": program()},
        arrays={"k.npy": np.zeros((2, 3, 2, 4), F32)},
    ),
    Case(
        "input shape",
        ["p.mlir", "--input", "k.npy", *RANDOM],
        "has shape [2, 2], expected tensor<2x3x2x4xf32>",
        files={"p.mlir": program()},
        arrays={"k.npy": np.zeros((2, 2), F32)},
    ),
    Case(
        "input float64",
        ["p.mlir", "--input", "k.npy", *RANDOM],
        "has dtype float64, expected float32",
        files={"p.mlir": program()},
        arrays={"k.npy": np.zeros((2, 3, 2, 4))},
    ),
    Case(
        "input int32",
        ["p.mlir", "--input", "k.npy", *RANDOM],
        "has dtype int32, expected float32",
        files={"p.mlir": program()},
        arrays={"k.npy": np.zeros((2, 3, 2, 4), np.int32)},
    ),
    Case(
        "input not npy",
        ["p.mlir", "--input", "k.npy", *RANDOM],
        "cannot read input",
        files={"p.mlir": program(), "k.npy": "not an array"},
    ),
    Case(
        "input missing",
        ["p.mlir", "--input", "nope.npy", *RANDOM],
        "cannot read input nope.npy",
        files={"p.mlir": program()},
    ),
    Case(
        "input binary junk",
        ["p.mlir", "--input", "k.npz", *RANDOM],
        "cannot read input",
        files={"p.mlir": program(), "k.npz": b"PK\x03\x04junk"},
    ),
    Case(
        "args syntax",
        ["p.mlir", "--args", "dense<[1, 2", *RANDOM],
        "--args",
        files={"p.mlir": program()},
    ),
    Case(
        "args kind",
        ["p.mlir", "--args", "3 : i32", *RANDOM],
        "dense<...>",
        files={"p.mlir": program()},
    ),
    Case(
        "args size",
        ["p.mlir", "--args", "dense<[1.0, 2.0]> : tensor<2xf32>", *RANDOM],
        "does not fit",
        files={"p.mlir": program()},
    ),
    Case(
        "negative seed",
        ["p.mlir", "--random-args", "-1"],
        "seed must be >= 0",
        files={"p.mlir": program()},
    ),
    Case(
        "seed not a number",
        ["p.mlir", "--random-args", "abc"],
        "seed must be an integer",
        files={"p.mlir": program()},
    ),
    Case(
        "dynamic argument",
        ["d.mlir", *RANDOM],
        "dynamic shape",
        files={"d.mlir": body("  func.return", "%x : tensor<?x4xf32>")},
    ),
    Case(
        "7 TiB argument",
        ["h.mlir", *RANDOM],
        "would take 3.6 TiB",
        files={"h.mlir": body("  func.return", "%x : tensor<100000x100000x100xf32>")},
    ),
    Case(
        "cache argument",
        ["c.mlir", *RANDOM],
        "is a KV cache: create it inside",
        files={"c.mlir": body("  func.return", "%c : !cache")},
    ),
    Case(
        "unknown device",
        ["p.mlir", "--device", "tpu", *RANDOM],
        "argument --device: invalid choice: 'tpu'",
        files={"p.mlir": program()},
    ),
    Case(
        "index bitwidth 16",
        ["p.mlir", "--index-bitwidth", "16"],
        "invalid choice",
        files={"p.mlir": program()},
    ),
    Case(
        "unknown flag",
        ["p.mlir", "--bogus"],
        "unrecognized arguments: --bogus",
        files={"p.mlir": program()},
    ),
    # -- the output, checked before the run ---------------------------------------------
    Case(
        "output folder missing",
        ["p.mlir", *RANDOM, "--output", "nope/out.npz"],
        "folder nope does not exist",
        files={"p.mlir": program()},
    ),
    Case(
        "output is a folder",
        ["p.mlir", *RANDOM, "--output", "dir.npz"],
        "is a directory",
        files={"p.mlir": program()},
        setup=lambda d: (d / "dir.npz").mkdir(),
    ),
    Case(
        "output under a file",
        ["p.mlir", *RANDOM, "--output", "p.mlir/out"],
        "does not exist",
        files={"p.mlir": program()},
    ),
    # -- the runtime ------------------------------------------------------------------------
    Case(
        "pool of 400000000 blocks",
        ["p.mlir", *RANDOM],
        "needs ",
        files={"p.mlir": program(num_blocks=400_000_000)},
    ),
    Case(
        "pool past memory",
        ["m.mlir", *RANDOM],
        "more than the",
        files={
            "m.mlir": program(
                cache="!llm.paged_kv_cache<f32, 100000, 1000, 4, 4, 16>",
                num_blocks=1000,
            )
            .replace("x2x4xf32", "x1000x4xf32")
            .replace("x4x4xf32", "x1000x4xf32")
        },
    ),
    Case(
        "out of blocks",
        ["p.mlir", *RANDOM],
        "only 1 of 1 are free",
        files={"p.mlir": program(num_blocks=1)},
    ),
    Case(
        "repeated ids",
        ["p.mlir", *RANDOM],
        "sequence 5 appears more than once",
        files={"p.mlir": program().replace("dense<[5, 6]>", "dense<[5, 5]>")},
    ),
    Case(
        "static table too narrow",
        ["w.mlir", *RANDOM],
        "holds 2 blocks, but the block table has room for 1",
        files={
            "w.mlir": program()
            .replace("tensor<2x4xi32>", "tensor<2x1xi32>")
            .replace("2x3x2x4xf32", "2x5x2x4xf32")
            .replace("tensor<2x3xi32>", "tensor<2x5xi32>")
        },
    ),
    Case(
        "free unknown sequence",
        ["f.mlir", "--args", "dense<[1, 2]> : tensor<2xi32>"],
        "unknown sequence id 1",
        files={
            "f.mlir": body(
                "  %c = llm.create_kv_cache {num_blocks = 4 : i64} : !cache\n"
                "  %c2 = llm.free_sequence %c, %ids : (!cache, tensor<2xi32>) -> !cache\n"
                "  func.return",
                "%ids : tensor<2xi32>",
            )
        },
    ),
    Case(
        "table of unknown sequence",
        ["b.mlir", "--args", "dense<[9]> : tensor<1xi32>"],
        "unknown sequence id 9",
        files={
            "b.mlir": body(
                "  %c = llm.create_kv_cache {num_blocks = 4 : i64} : !cache\n"
                "  %t, %l = llm.block_table %c, %ids : (!cache, tensor<1xi32>)"
                " -> (tensor<1x4xi32>, tensor<1xi32>)\n"
                "  func.return %l : tensor<1xi32>",
                "%ids : tensor<1xi32>",
                "tensor<1xi32>",
            )
        },
    ),
    Case(
        "table from outside",
        [
            "o.mlir",
            "--args",
            "dense<[[7, -1]]> : tensor<1x2xi32>, dense<[3]> : tensor<1xi32>",
            *RANDOM,
        ],
        "block_table[0, 0] = 7 is out of range, the pool has 4 blocks",
        files={
            "o.mlir": body(
                "  %c = llm.create_kv_cache {num_blocks = 4 : i64} : !cache\n"
                "  %o = llm.paged_attention %q, %c, %t, %l : (tensor<1x1x2x4xf32>, !cache,"
                " tensor<1x2xi32>, tensor<1xi32>) -> tensor<1x1x2x4xf32>\n"
                "  func.return %o : tensor<1x1x2x4xf32>",
                "%t : tensor<1x2xi32>, %l : tensor<1xi32>, %q : tensor<1x1x2x4xf32>",
                "tensor<1x1x2x4xf32>",
            )
        },
    ),
    Case(
        "negative length",
        [
            "o.mlir",
            "--args",
            "dense<[[0, -1]]> : tensor<1x2xi32>, dense<[-3]> : tensor<1xi32>",
            *RANDOM,
        ],
        "seq_lens[0] = -3 is negative",
        files={
            "o.mlir": body(
                "  %c = llm.create_kv_cache {num_blocks = 4 : i64} : !cache\n"
                "  %o = llm.paged_attention %q, %c, %t, %l : (tensor<1x1x2x4xf32>, !cache,"
                " tensor<1x2xi32>, tensor<1xi32>) -> tensor<1x1x2x4xf32>\n"
                "  func.return %o : tensor<1x1x2x4xf32>",
                "%t : tensor<1x2xi32>, %l : tensor<1xi32>, %q : tensor<1x1x2x4xf32>",
                "tensor<1x1x2x4xf32>",
            )
        },
    ),
    Case(
        "match without prefix caching",
        ["m.mlir", "--args", "dense<[1]> : tensor<1xi32>"],
        "prefix matching needs a cache created with enable_prefix_caching=True",
        files={
            "m.mlir": body(
                "  %c = llm.create_kv_cache {num_blocks = 4 : i64} : !cache\n"
                "  %p = arith.constant dense<[[1, 2, 3]]> : tensor<1x3xi32>\n"
                "  %c2, %n = llm.match_prefix %c, %ids, %p : (!cache, tensor<1xi32>,"
                " tensor<1x3xi32>) -> (!cache, tensor<1xi32>)\n"
                "  func.return %n : tensor<1xi32>",
                "%ids : tensor<1xi32>",
                "tensor<1xi32>",
            )
        },
    ),
    Case(
        "fork a missing sequence",
        ["f.mlir", "--args", "dense<[1]> : tensor<1xi32>, dense<[2]> : tensor<1xi32>"],
        "unknown sequence id 1",
        files={
            "f.mlir": body(
                "  %c = llm.create_kv_cache {num_blocks = 4 : i64} : !cache\n"
                "  %c2 = llm.fork_sequence %c, %p, %q : (!cache, tensor<1xi32>,"
                " tensor<1xi32>) -> !cache\n"
                "  func.return",
                "%p : tensor<1xi32>, %q : tensor<1xi32>",
            )
        },
    ),
    Case(
        "token ids beyond int32 range",
        ["t.mlir", *RANDOM],
        "token_ids holds -5, outside [0, 2147483647]",
        files={
            "t.mlir": body(
                "  %ids = arith.constant dense<[1]> : tensor<1xi32>\n"
                "  %t = arith.constant dense<[[-5]]> : tensor<1x1xi32>\n"
                "  %c = llm.create_kv_cache {num_blocks = 8 : i64, prefix_caching = true}"
                " : !cache\n"
                "  %a, %ia = llm.append_kv %c, %k, %k, %ids, %t : (!cache, tensor<1x1x2x4xf32>,"
                " tensor<1x1x2x4xf32>, tensor<1xi32>, tensor<1x1xi32>)"
                " -> (!cache, tensor<1x1xi32>)\n"
                "  func.return",
                "%k : tensor<1x1x2x4xf32>",
            )
        },
    ),
    Case(
        "shards not dividing the heads",
        ["p.mlir", "--shards", "3", *RANDOM],
        "3 shards do not divide the cache's 2 kv heads: give a divisor of 2",
        files={"p.mlir": program()},
    ),
    Case(
        "no shards",
        ["p.mlir", "--shards", "0", *RANDOM],
        "--shards must be at least 1, got 0",
        files={"p.mlir": program()},
    ),
    Case(
        "too long",
        ["l.mlir", *RANDOM],
        "would grow to 18 tokens, max_seq_len is 16",
        files={
            "l.mlir": body(
                "  %ids = arith.constant dense<[1]> : tensor<1xi32>\n"
                "  %c = llm.create_kv_cache {num_blocks = 8 : i64} : !cache\n"
                "  %a, %ia = llm.append_kv %c, %k, %k, %ids : (!cache, tensor<1x9x2x4xf32>,"
                " tensor<1x9x2x4xf32>, tensor<1xi32>) -> (!cache, tensor<1x9xi32>)\n"
                "  %b, %ib = llm.append_kv %a, %k, %k, %ids : (!cache, tensor<1x9x2x4xf32>,"
                " tensor<1x9x2x4xf32>, tensor<1xi32>) -> (!cache, tensor<1x9xi32>)\n"
                "  func.return",
                "%k : tensor<1x9x2x4xf32>",
            )
        },
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_exit_2_and_one_line(
    case: Case,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, content in case.files.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    for name, array in case.arrays.items():
        np.save(tmp_path / name, array)
    if case.setup is not None:
        case.setup(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in case.args]
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    captured = capsys.readouterr()
    lines = stderr_lines(captured.err)
    assert status == 2, captured.err
    assert "Traceback" not in captured.err
    assert lines[0].startswith("llmir-run: error: "), captured.err
    assert case.message.replace("{tmp}", str(tmp_path)) in lines[0]
    assert len(lines) == (3 if case.excerpt else 1), captured.err


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 70


def test_a_reader_that_goes_away_ends_the_run_quietly(tmp_path: Path) -> None:
    """``llmir-run ... | head -1``: no "internal error" when the pipe closes.
    (The reader here, `true`, is gone before llmir-run has imported, so the
    first write always meets a closed pipe.)"""
    import subprocess
    import sys

    source = tmp_path / "good.mlir"
    source.write_text(program())
    command = (
        f"{sys.executable} -m llmir.tools.run {source} --random-args 0 --stats | true"
    )
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True
    )
    assert stderr_lines(done.stderr) == []
    assert done.returncode == 0
