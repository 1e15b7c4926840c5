// RUN: xdsl-opt %s -p 'llm-plan-kv-memory{budget=8GiB}' | filecheck %s
// Idempotent:
// RUN: xdsl-opt %s -p 'llm-plan-kv-memory{budget=8GiB}' > %t.mlir && xdsl-opt %t.mlir -p 'llm-plan-kv-memory{budget=8GiB}' | diff %t.mlir -
// The statistics pass reports the same figures:
// RUN: xdsl-opt %s -p 'llm-plan-kv-memory{budget=8GiB},llm-kv-cache-stats' | filecheck %s --check-prefix=STATS
// A budget that cannot hold one sequence of max_seq_len fails with the bytes needed:
// RUN: not xdsl-opt %s -p 'llm-plan-kv-memory{budget=100MB}' 2>&1 | filecheck %s --check-prefix=SMALL
// RUN: not xdsl-opt %s -p 'llm-plan-kv-memory{budget=lots}' 2>&1 | filecheck %s --check-prefix=BAD

// Two caches share 8 GiB in proportion to their bytes per token slot: each
// holds 3971 blocks of 16 tokens.  f16, 32 layers, 8 kv heads, head_dim 128:
// a block is 2 MiB of K/V plus 12 bytes of bookkeeping.
// CHECK-LABEL: func.func @two_caches
// CHECK-NEXT: %big = llm.create_kv_cache {llm.kv_plan = {blocks = 3971 : i64, tokens = 63536 : i64, max_len_sequences = 15 : i64, pool_bytes = 8327790592 : i64, bookkeeping_bytes = 47652 : i64}, num_blocks = 3971 : i64} : !llm.paged_kv_cache<f16, 32, 8, 128, 16, 4096>
// CHECK-NEXT: %small = llm.create_kv_cache {llm.kv_plan = {blocks = 3971 : i64, tokens = 63536 : i64, max_len_sequences = 15 : i64, pool_bytes = 260243456 : i64, bookkeeping_bytes = 47652 : i64}, num_blocks = 3971 : i64} : !llm.paged_kv_cache<f32, 4, 2, 64, 16, 4096>

// STATS-LABEL: func.func @two_caches
// STATS-SAME: kv_pool_bytes = 8588034048 : i64, kv_bookkeeping_bytes = 95304 : i64, kv_token_slots = 127072 : i64, kv_max_len_sequences = 30 : i64

// SMALL: llm-plan-kv-memory: a budget of 95.4 MiB (100000000 bytes) cannot hold one sequence of 4096 tokens in !llm.paged_kv_cache<f16, 32, 8, 128, 16, 4096>: that needs 536873984 bytes (256 blocks of 2097164 bytes); the module's 2 cache(s) need 553654272 bytes

// BAD: llm-plan-kv-memory: cannot read 'lots' as a byte count
func.func @two_caches() {
  %big = llm.create_kv_cache {num_blocks = 1 : i64} : !llm.paged_kv_cache<f16, 32, 8, 128, 16, 4096>
  %small = llm.create_kv_cache {num_blocks = 7 : i64} : !llm.paged_kv_cache<f32, 4, 2, 64, 16, 4096>
  func.return
}
