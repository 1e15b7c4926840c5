// RUN: xdsl-opt %s | xdsl-opt | filecheck %s
// RUN: xdsl-opt %s --print-op-generic | xdsl-opt | filecheck %s
// RUN: xdsl-opt %s --print-op-generic | filecheck %s --check-prefix=GENERIC

!cache = !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
!cache32 = !llm.paged_kv_cache<f32, 1, 1, 4, 4, 8>
!cachebf = !llm.paged_kv_cache<bf16, 3, 2, 16, 8, 32>

// CHECK-LABEL: func.func @types
// CHECK-SAME: !llm.paged_kv_cache<f32, 1, 1, 4, 4, 8>, %{{.*}}: !llm.paged_kv_cache<bf16, 3, 2, 16, 8, 32>
// GENERIC-LABEL: "func.func"() <{sym_name = "types"
func.func @types(%a : !cache32, %b : !cachebf) {
  func.return
}

// CHECK-LABEL: func.func @full_program
func.func @full_program(%keys : tensor<2x3x4x8xf16>, %values : tensor<2x3x4x8xf16>,
                        %seq_ids : tensor<2xi32>, %query : tensor<2x3x8x8xf32>) {
  // CHECK-NEXT: %kv = llm.create_kv_cache {num_blocks = 32 : i64} : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
  // GENERIC: %kv = "llm.create_kv_cache"() <{num_blocks = 32 : i64, prefix_caching = false, eviction = "lru", swap_blocks = 0 : i64, heavy_hitter_score = "mean"}> : () -> !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
  %kv = llm.create_kv_cache {num_blocks = 32 : i64} : !cache

  // CHECK-NEXT: %kv1, %idx = llm.append_kv %kv, %keys, %values, %seq_ids {layer = 1 : i32} : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x4x8xf16>, tensor<2x3x4x8xf16>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3xi32>)
  // GENERIC: %kv1, %idx = "llm.append_kv"(%kv, %keys, %values, %seq_ids) <{layer = 1 : i32}> : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x4x8xf16>, tensor<2x3x4x8xf16>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3xi32>)
  %kv1, %idx = llm.append_kv %kv, %keys, %values, %seq_ids {layer = 1 : i32}
      : (!cache, tensor<2x3x4x8xf16>, tensor<2x3x4x8xf16>, tensor<2xi32>) -> (!cache, tensor<2x3xi32>)

  // CHECK-NEXT: %table, %lens = llm.block_table %kv1, %seq_ids : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>) -> (tensor<2x4xi32>, tensor<2xi32>)
  // GENERIC: %table, %lens = "llm.block_table"(%kv1, %seq_ids) : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>) -> (tensor<2x4xi32>, tensor<2xi32>)
  %table, %lens = llm.block_table %kv1, %seq_ids : (!cache, tensor<2xi32>) -> (tensor<2x4xi32>, tensor<2xi32>)

  // Lookup into f32 tensors and into the cache's own element type.
  // CHECK-NEXT: %k, %v = llm.lookup_kv %kv1, %table, %lens {layer = 1 : i32} : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> (tensor<2x64x4x8xf32>, tensor<2x64x4x8xf32>)
  // GENERIC: %k, %v = "llm.lookup_kv"(%kv1, %table, %lens) <{layer = 1 : i32}>
  %k, %v = llm.lookup_kv %kv1, %table, %lens {layer = 1 : i32}
      : (!cache, tensor<2x4xi32>, tensor<2xi32>) -> (tensor<2x64x4x8xf32>, tensor<2x64x4x8xf32>)
  // CHECK-NEXT: %k16, %v16 = llm.lookup_kv %kv1, %table, %lens : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> (tensor<2x20x4x8xf16>, tensor<2x20x4x8xf16>)
  %k16, %v16 = llm.lookup_kv %kv1, %table, %lens
      : (!cache, tensor<2x4xi32>, tensor<2xi32>) -> (tensor<2x20x4x8xf16>, tensor<2x20x4x8xf16>)

  // GQA prefill (8 query heads over 4 kv heads), every attribute given.
  // CHECK-NEXT: %out = llm.paged_attention %query, %kv1, %table, %lens {num_heads = 8 : i32, head_dim = 8 : i32, scale = 5.000000e-01 : f32, layer = 1 : i32, causal = false} : (tensor<2x3x8x8xf32>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x3x8x8xf32>
  // GENERIC: %out = "llm.paged_attention"(%query, %kv1, %table, %lens) <{num_heads = 8 : i32, head_dim = 8 : i32, scale = 5.000000e-01 : f32, layer = 1 : i32, causal = false}>
  %out = llm.paged_attention %query, %kv1, %table, %lens
      {num_heads = 8 : i32, head_dim = 8 : i32, scale = 0.5 : f32, layer = 1 : i32, causal = false}
      : (tensor<2x3x8x8xf32>, !cache, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x3x8x8xf32>

  // Sliding window and logit soft-capping (Mistral/Gemma-style).
  // CHECK-NEXT: %windowed = llm.paged_attention %query, %kv1, %table, %lens {sliding_window = 4 : i32, logits_soft_cap = 3.000000e+01 : f32} : (tensor<2x3x8x8xf32>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x3x8x8xf32>
  // Defaults (layer 0, causal) are explicit in the generic form, elided in the custom one.
  // GENERIC: %windowed = "llm.paged_attention"(%query, %kv1, %table, %lens) <{sliding_window = 4 : i32, logits_soft_cap = 3.000000e+01 : f32, layer = 0 : i32, causal = true}>
  %windowed = llm.paged_attention %query, %kv1, %table, %lens
      {sliding_window = 4 : i32, logits_soft_cap = 30.0 : f32}
      : (tensor<2x3x8x8xf32>, !cache, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x3x8x8xf32>

  // CHECK-NEXT: %kv2 = llm.free_sequence %kv1, %seq_ids : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>) -> !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
  // GENERIC: %kv2 = "llm.free_sequence"(%kv1, %seq_ids) : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>) -> !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
  %kv2 = llm.free_sequence %kv1, %seq_ids : (!cache, tensor<2xi32>) -> !cache
  func.return
}

// Sharing: a prefix-caching cache, appends naming their tokens, prefix
// matching, forks, and frees that keep a retention priority.
// CHECK-LABEL: func.func @sharing
func.func @sharing(%keys : tensor<2x3x4x8xf16>, %seq_ids : tensor<2xi32>,
                   %tokens : tensor<2x3xi32>, %prompts : tensor<2x16xi32>, %children : tensor<2xi32>) {
  // CHECK-NEXT: %kv = llm.create_kv_cache {num_blocks = 32 : i64, prefix_caching = true, eviction = "priority"} : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
  // GENERIC: %kv = "llm.create_kv_cache"() <{num_blocks = 32 : i64, prefix_caching = true, eviction = "priority", swap_blocks = 0 : i64, heavy_hitter_score = "mean"}>
  %kv = llm.create_kv_cache {num_blocks = 32 : i64, prefix_caching = true, eviction = "priority"} : !cache
  // CHECK-NEXT: %kv1, %cached = llm.match_prefix %kv, %seq_ids, %prompts : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>, tensor<2x16xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>)
  %kv1, %cached = llm.match_prefix %kv, %seq_ids, %prompts
      : (!cache, tensor<2xi32>, tensor<2x16xi32>) -> (!cache, tensor<2xi32>)
  // CHECK-NEXT: %kv2, %idx = llm.append_kv %kv1, %keys, %keys, %seq_ids, %tokens : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x4x8xf16>, tensor<2x3x4x8xf16>, tensor<2xi32>, tensor<2x3xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3xi32>)
  // GENERIC: %kv2, %idx = "llm.append_kv"(%kv1, %keys, %keys, %seq_ids, %tokens) <{layer = 0 : i32}>
  %kv2, %idx = llm.append_kv %kv1, %keys, %keys, %seq_ids, %tokens
      : (!cache, tensor<2x3x4x8xf16>, tensor<2x3x4x8xf16>, tensor<2xi32>, tensor<2x3xi32>) -> (!cache, tensor<2x3xi32>)
  // CHECK-NEXT: %kv3 = llm.fork_sequence %kv2, %seq_ids, %children : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>, tensor<2xi32>) -> !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
  %kv3 = llm.fork_sequence %kv2, %seq_ids, %children : (!cache, tensor<2xi32>, tensor<2xi32>) -> !cache
  // CHECK-NEXT: %kv4 = llm.free_sequence %kv3, %seq_ids {priority = 7 : i32} : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>) -> !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
  %kv4 = llm.free_sequence %kv3, %seq_ids {priority = 7 : i32} : (!cache, tensor<2xi32>) -> !cache
  func.return
}

// Dynamic batch, token count and table width.
// CHECK-LABEL: func.func @dynamic
func.func @dynamic(%kv : !cache, %keys : tensor<?x?x4x8xf32>, %seq_ids : tensor<?xi32>, %query : tensor<?x1x4x8xf16>) {
  // CHECK-NEXT: %kv1, %idx = llm.append_kv %kv, %keys, %keys, %seq_ids : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<?x?x4x8xf32>, tensor<?x?x4x8xf32>, tensor<?xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<?x?xi32>)
  %kv1, %idx = llm.append_kv %kv, %keys, %keys, %seq_ids
      : (!cache, tensor<?x?x4x8xf32>, tensor<?x?x4x8xf32>, tensor<?xi32>) -> (!cache, tensor<?x?xi32>)
  // CHECK-NEXT: %table, %lens = llm.block_table %kv1, %seq_ids : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<?xi32>) -> (tensor<?x?xi32>, tensor<?xi32>)
  %table, %lens = llm.block_table %kv1, %seq_ids : (!cache, tensor<?xi32>) -> (tensor<?x?xi32>, tensor<?xi32>)
  // CHECK-NEXT: %out = llm.paged_attention %query, %kv1, %table, %lens : (tensor<?x1x4x8xf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x1x4x8xf16>
  %out = llm.paged_attention %query, %kv1, %table, %lens
      : (tensor<?x1x4x8xf16>, !cache, tensor<?x?xi32>, tensor<?xi32>) -> tensor<?x1x4x8xf16>
  func.return
}

// A reserved step: slots once for all layers, data per layer.
// CHECK-LABEL: func.func @reserved_step
func.func @reserved_step(%kv : !cache, %keys : tensor<2x1x4x8xf16>, %seq_ids : tensor<2xi32>) {
  // CHECK-NEXT: %kv1, %slots, %table, %lens = llm.reserve_slots %kv, %seq_ids {num_tokens = 1 : i32} : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x2x1xi32>, tensor<2x4xi32>, tensor<2xi32>)
  // GENERIC: "llm.reserve_slots"(%kv, %seq_ids) <{num_tokens = 1 : i32}>
  %kv1, %slots, %table, %lens = llm.reserve_slots %kv, %seq_ids {num_tokens = 1 : i32}
      : (!cache, tensor<2xi32>) -> (!cache, tensor<2x2x1xi32>, tensor<2x4xi32>, tensor<2xi32>)
  // CHECK-NEXT: %kv2 = llm.write_kv %kv1, %keys, %keys, %slots {layer = 1 : i32} : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x1x4x8xf16>, tensor<2x1x4x8xf16>, tensor<2x2x1xi32>) -> !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
  // GENERIC: "llm.write_kv"(%kv1, %keys, %keys, %slots) <{layer = 1 : i32}>
  %kv2 = llm.write_kv %kv1, %keys, %keys, %slots {layer = 1 : i32}
      : (!cache, tensor<2x1x4x8xf16>, tensor<2x1x4x8xf16>, tensor<2x2x1xi32>) -> !cache
  func.return
}

// Swapping: a cache with a swap tier, sequences out and back in.
// CHECK-LABEL: func.func @swapping
func.func @swapping(%seq_ids : tensor<2xi32>) {
  // CHECK-NEXT: %kv = llm.create_kv_cache {num_blocks = 32 : i64, swap_blocks = 64 : i64} : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
  %kv = llm.create_kv_cache {num_blocks = 32 : i64, swap_blocks = 64 : i64} : !cache
  // CHECK-NEXT: %kv1 = llm.swap_out %kv, %seq_ids : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>) -> !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
  %kv1 = llm.swap_out %kv, %seq_ids : (!cache, tensor<2xi32>) -> !cache
  // CHECK-NEXT: %kv2 = llm.swap_in %kv1, %seq_ids : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>) -> !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
  %kv2 = llm.swap_in %kv1, %seq_ids : (!cache, tensor<2xi32>) -> !cache
  func.return
}

// Pruning: a cache keeping 4 sink tokens and a window of 32, and attention
// with the matching mask.
// CHECK-LABEL: func.func @streaming
func.func @streaming(%query : tensor<2x1x8x8xf32>, %table : tensor<2x4xi32>, %lens : tensor<2xi32>) {
  // CHECK-NEXT: %kv = llm.create_kv_cache {num_blocks = 8 : i64, window_tokens = 32 : i64, sink_tokens = 4 : i64} : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
  // GENERIC: "llm.create_kv_cache"() <{num_blocks = 8 : i64, window_tokens = 32 : i64, sink_tokens = 4 : i64, prefix_caching = false, eviction = "lru", swap_blocks = 0 : i64, heavy_hitter_score = "mean"}>
  %kv = llm.create_kv_cache {num_blocks = 8 : i64, window_tokens = 32 : i64, sink_tokens = 4 : i64} : !cache
  // CHECK-NEXT: %out = llm.paged_attention %query, %kv, %table, %lens {sliding_window = 32 : i32, sink_tokens = 4 : i32} : (tensor<2x1x8x8xf32>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x8x8xf32>
  %out = llm.paged_attention %query, %kv, %table, %lens {sliding_window = 32 : i32, sink_tokens = 4 : i32}
      : (tensor<2x1x8x8xf32>, !cache, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x8x8xf32>
  func.return
}

// Heavy-hitter pruning: at most 6 blocks per sequence.
// CHECK-LABEL: func.func @heavy_hitters
func.func @heavy_hitters() {
  // CHECK-NEXT: %kv = llm.create_kv_cache {num_blocks = 8 : i64, window_tokens = 32 : i64, sink_tokens = 4 : i64, heavy_hitter_blocks = 6 : i64, heavy_hitter_score = "sum"} : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
  %kv = llm.create_kv_cache {num_blocks = 8 : i64, window_tokens = 32 : i64, sink_tokens = 4 : i64, heavy_hitter_blocks = 6 : i64, heavy_hitter_score = "sum"} : !cache
  func.return
}
