// Pruning end to end: examples/streaming.mlir generates 420 tokens in a pool
// of 64 slots, directly and lowered, checked against the dense reference
// (which never prunes).  Without pruning the same program runs out of blocks.
// RUN: llmir-run %examples/streaming.mlir --random-args 0 --stats --check | filecheck %s
// RUN: llmir-run %examples/streaming.mlir -p convert-llm-to-func --random-args 0 --check | filecheck %s --check-prefix=LOWERED
// RUN: sed 's/, window_tokens = 16 : i64, sink_tokens = 4 : i64//' %examples/streaming.mlir > %t.mlir
// RUN: not llmir-run %t.mlir --random-args 0 2>&1 | filecheck %s --check-prefix=UNPRUNED

// CHECK: result2: int32[2] [210, 210]
// Each sequence holds its sink block and the 5 blocks around its window:
// CHECK: blocks 12 used, 0 cached-free, 4 free of 16
// CHECK-NEXT: sequences 2 holding 420 tokens
// CHECK: pruning 94 blocks given back, 376 tokens of live sequences pruned
// CHECK: check: PASS

// LOWERED: result2: int32[2] [210, 210]
// LOWERED: check: PASS

// UNPRUNED: llmir-run: error: appending 1 token(s) to 2 sequence(s) needs 2 new blocks, only 0 of 16 are free

// Heavy hitters instead of the window cut: 4 sinks, a window of 8 and the
// blocks attention weighed most, within 6 blocks per sequence; direct and
// lowered runs agree.
// RUN: sed 's/window_tokens = 16 : i64, sink_tokens = 4 : i64/window_tokens = 8 : i64, sink_tokens = 4 : i64, heavy_hitter_blocks = 6 : i64/' %examples/streaming.mlir > %t.h2o.mlir
// RUN: llmir-run %t.h2o.mlir --random-args 0 --stats | filecheck %s --check-prefix=HEAVY
// RUN: llmir-run %t.h2o.mlir -p convert-llm-to-func --random-args 0 --stats | filecheck %s --check-prefix=HEAVY
// HEAVY: result0: float32[2, 1, 2, 16] [ 0.5226, -1.2879,  0.5822,  0.8463,  0.3064,  0.6299, ...]
// HEAVY: result2: int32[2] [210, 210]
// HEAVY: blocks 12 used, 0 cached-free, 4 free of 16
// HEAVY: pruning 94 blocks given back, 376 tokens of live sequences pruned
// RUN: not llmir-run %t.h2o.mlir --random-args 0 --check 2>&1 | filecheck %s --check-prefix=NOCHECK
// NOCHECK: llmir-run: error: --check compares with the dense reference, which keeps every token, but this program's cache prunes heavy hitters (heavy_hitter_blocks = 6): outputs differ by design; run it without --check
