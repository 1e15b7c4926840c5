// Sharing end to end: examples/shared_prefix.mlir, directly and lowered,
// checked against the dense reference, with the sharing statistics.
// RUN: llmir-run %examples/shared_prefix.mlir --random-args 0 --stats --check | filecheck %s
// RUN: llmir-run %examples/shared_prefix.mlir -p convert-llm-to-func --random-args 0 --stats --check | filecheck %s

// CHECK: result0: float32[4, 1, 2, 16]
// CHECK: result1: float32[2, 1, 2, 16]
// Each of requests 1-3 finds the 32-token system prompt cached:
// CHECK: result2: int32[3] [32, 32, 32]
// Six sequences of 40-41 tokens (3 blocks each if unshared: 18) fit in 8:
// the system prompt's 2 blocks, 4 own blocks, 2 copies for the samples.
// CHECK: blocks 8 used, 0 cached-free, 24 free of 32
// CHECK-NEXT: sequences 6 holding 242 tokens
// CHECK: sharing 2 blocks shared, factor 2.25, 10 blocks saved, 2 copy-on-write copies
// CHECK-NEXT: prefix cache 3 queries, 96 of 121 tokens hit (79.3%, 0 from partial blocks), 0 evictions
// CHECK: check: PASS
