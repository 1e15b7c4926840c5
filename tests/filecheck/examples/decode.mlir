// The main job end to end: run examples/decode.mlir with llmir-run, directly
// and after lowering, and check both against the dense numpy reference.
// RUN: llmir-run %examples/decode.mlir --random-args 0 --stats --check | filecheck %s
// RUN: llmir-run %examples/decode.mlir -p convert-llm-to-func --random-args 0 --check | filecheck %s --check-prefix=LOWERED

// CHECK: result0: float32[3, 1, 4, 32]
// CHECK: result1: float32[1, 12, 4, 32]
// Prompts of 7, 3 and 12 tokens, then 16 decode steps:
// CHECK: result2: int32[3] [23, 19, 28]
// 23, 19 and 28 tokens in blocks of 16 take 2 + 2 + 2 blocks:
// CHECK: cache0: f16, 2 layers, 4 kv heads, head_dim 32, block 16, max_seq_len 256
// CHECK-NEXT: blocks 6 used, 0 cached-free, 58 free of 64
// CHECK-NEXT: sequences 3 holding 70 tokens
// CHECK: check: PASS

// LOWERED: result2: int32[3] [23, 19, 28]
// LOWERED: check: PASS
