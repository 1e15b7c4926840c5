// The main job end to end: run examples/decode.mlir with llmir-run, directly
// and after lowering, and check both against the dense numpy reference.
// RUN: llmir-run %examples/decode.mlir --random-args 0 --stats --check | filecheck %s
// RUN: llmir-run %examples/decode.mlir -p convert-llm-to-func --random-args 0 --check | filecheck %s --check-prefix=LOWERED

// CHECK: result0: float32[3, 1, 4, 32]
// CHECK: result1: float32[1, 12, 4, 32]
// Prompts of 7, 3 and 12 tokens, then 16 decode steps:
// CHECK: result2: int32[3] [23, 19, 28]
// 23, 19 and 28 tokens in blocks of 16 take 2 + 2 + 2 blocks:
// CHECK: cache0: CacheStats(blocks_total=64, blocks_used=6, blocks_free=58, num_sequences=3, tokens_stored=70
// CHECK: check: PASS

// LOWERED: result2: int32[3] [23, 19, 28]
// LOWERED: check: PASS
