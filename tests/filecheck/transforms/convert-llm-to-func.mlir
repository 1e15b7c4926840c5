// RUN: xdsl-opt %s -p convert-llm-to-func | filecheck %s
// The lowered module verifies, round-trips, and lowering it again is a no-op:
// RUN: xdsl-opt %s -p convert-llm-to-func | xdsl-opt | filecheck %s
// RUN: xdsl-opt %s -p convert-llm-to-func > %t.mlir && xdsl-opt %t.mlir -p convert-llm-to-func | diff %t.mlir -
// Neither an llm op nor the cache type survives:
// RUN: xdsl-opt %s -p convert-llm-to-func | filecheck %s --check-prefix=NOLLM

// NOLLM-NOT: llm.

!cache = !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

// Every op.  Attributes become constants at the top of the function, tensors
// are cast to dynamic shapes once, right after they are defined, and call
// results are cast back to static types only where the program uses them.
// CHECK-LABEL: func.func @every_op(%keys: tensor<2x3x4x8xf16>, %seq_ids: tensor<2xi32>, %query: tensor<2x3x8x8xf32>)
// CHECK-NEXT: %query_1 = tensor.cast %query : tensor<2x3x8x8xf32> to tensor<?x?x?x?xf32>
// CHECK-NEXT: %seq_ids_1 = tensor.cast %seq_ids : tensor<2xi32> to tensor<?xi32>
// CHECK-NEXT: %keys_1 = tensor.cast %keys : tensor<2x3x4x8xf16> to tensor<?x?x?x?xf16>
// CHECK-NEXT: %num_layers = arith.constant 2 : i64
// CHECK-NEXT: %num_heads = arith.constant 4 : i64
// CHECK-NEXT: %head_dim = arith.constant 8 : i64
// CHECK-NEXT: %block_size = arith.constant 16 : i64
// CHECK-NEXT: %max_seq_len = arith.constant 64 : i64
// CHECK-NEXT: %num_blocks = arith.constant 32 : i64
// CHECK-NEXT: %prefix_caching = arith.constant false
// CHECK-NEXT: %eviction = arith.constant 0 : i64
// CHECK-NEXT: %swap_blocks = arith.constant 0 : i64
// CHECK-NEXT: %window_tokens = arith.constant 0 : i64
// CHECK-NEXT: %sink_tokens = arith.constant 0 : i64
// CHECK-NEXT: %heavy_hitter_blocks = arith.constant 0 : i64
// CHECK-NEXT: %heavy_hitter_score = arith.constant 0 : i64
// An absent token_ids operand is an empty tensor.
// CHECK-NEXT: %none = tensor.empty() : tensor<0x0xi32>
// CHECK-NEXT: %none_1 = tensor.cast %none : tensor<0x0xi32> to tensor<?x?xi32>
// CHECK-NEXT: %layer = arith.constant 1 : i32
// CHECK-NEXT: %width = arith.constant 4 : i64
// CHECK-NEXT: %max_len = arith.constant 64 : i64
// The default scale 1/sqrt(8) is made explicit; causal = false is kept.
// CHECK-NEXT: %scale = arith.constant 0.353553{{[0-9]*}} : f32
// CHECK-NEXT: %causal = arith.constant false
// CHECK-NEXT: %sliding_window = arith.constant 8 : i32
// CHECK-NEXT: %logits_soft_cap = arith.constant 5.000000e+01 : f32
// CHECK-NEXT: %sink_tokens_1 = arith.constant 0 : i32
// CHECK-NEXT: %priority = arith.constant -9223372036854775808 : i64
// CHECK-NEXT: %kv = func.call @llmir_create_kv_cache_f16(%num_layers, %num_heads, %head_dim, %block_size, %max_seq_len, %num_blocks, %prefix_caching, %eviction, %swap_blocks, %window_tokens, %sink_tokens, %heavy_hitter_blocks, %heavy_hitter_score) : (i64, i64, i64, i64, i64, i64, i1, i64, i64, i64, i64, i64, i64) -> !llvm.ptr
// CHECK-NEXT: %idx = func.call @llmir_append_kv_f16(%kv, %keys_1, %keys_1, %seq_ids_1, %none_1, %layer) : (!llvm.ptr, tensor<?x?x?x?xf16>, tensor<?x?x?x?xf16>, tensor<?xi32>, tensor<?x?xi32>, i32) -> tensor<?x?xi32>
// CHECK-NEXT: %idx_1 = tensor.cast %idx : tensor<?x?xi32> to tensor<2x3xi32>
// CHECK-NEXT: %table, %lens = func.call @llmir_block_table(%kv, %seq_ids_1, %width) : (!llvm.ptr, tensor<?xi32>, i64) -> (tensor<?x?xi32>, tensor<?xi32>)
// CHECK-NEXT: %k, %v = func.call @llmir_lookup_kv_f32(%kv, %table, %lens, %layer, %max_len) : (!llvm.ptr, tensor<?x?xi32>, tensor<?xi32>, i32, i64) -> (tensor<?x?x?x?xf32>, tensor<?x?x?x?xf32>)
// CHECK-NEXT: %k_1 = tensor.cast %k : tensor<?x?x?x?xf32> to tensor<2x64x4x8xf32>
// CHECK-NEXT: %out = func.call @llmir_paged_attention_f32(%query_1, %kv, %table, %lens, %layer, %scale, %causal, %sliding_window, %logits_soft_cap, %sink_tokens_1) : (tensor<?x?x?x?xf32>, !llvm.ptr, tensor<?x?xi32>, tensor<?xi32>, i32, f32, i1, i32, f32, i32) -> tensor<?x?x?x?xf32>
// CHECK-NEXT: %out_1 = tensor.cast %out : tensor<?x?x?x?xf32> to tensor<2x3x8x8xf32>
// CHECK-NEXT: func.call @llmir_free_sequence(%kv, %seq_ids_1, %priority) : (!llvm.ptr, tensor<?xi32>, i64) -> ()
// CHECK-NEXT: func.return %out_1, %k_1, %idx_1 : tensor<2x3x8x8xf32>, tensor<2x64x4x8xf32>, tensor<2x3xi32>
func.func @every_op(%keys : tensor<2x3x4x8xf16>, %seq_ids : tensor<2xi32>,
                    %query : tensor<2x3x8x8xf32>) -> (tensor<2x3x8x8xf32>, tensor<2x64x4x8xf32>, tensor<2x3xi32>) {
  %kv = llm.create_kv_cache {num_blocks = 32 : i64} : !cache
  %kv1, %idx = llm.append_kv %kv, %keys, %keys, %seq_ids {layer = 1 : i32, block_size = 16 : i32, max_seq_len = 64 : i32}
      : (!cache, tensor<2x3x4x8xf16>, tensor<2x3x4x8xf16>, tensor<2xi32>) -> (!cache, tensor<2x3xi32>)
  %table, %lens = llm.block_table %kv1, %seq_ids : (!cache, tensor<2xi32>) -> (tensor<2x4xi32>, tensor<2xi32>)
  %k, %v = llm.lookup_kv %kv1, %table, %lens {layer = 1 : i32}
      : (!cache, tensor<2x4xi32>, tensor<2xi32>) -> (tensor<2x64x4x8xf32>, tensor<2x64x4x8xf32>)
  %out = llm.paged_attention %query, %kv1, %table, %lens {layer = 1 : i32, causal = false, sliding_window = 8 : i32, logits_soft_cap = 50.0 : f32}
      : (tensor<2x3x8x8xf32>, !cache, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x3x8x8xf32>
  %kv2 = llm.free_sequence %kv1, %seq_ids : (!cache, tensor<2xi32>) -> !cache
  func.return %out, %k, %idx : tensor<2x3x8x8xf32>, tensor<2x64x4x8xf32>, tensor<2x3xi32>
}

// Reads whose results are unused are kept: they check their inputs as the
// direct form does, and attention over a heavy-hitter cache records the
// mass pruning decides by.
// CHECK-LABEL: func.func @dead_read(%kv: !llvm.ptr, %s: tensor<2xi32>)
// CHECK: %t, %l = func.call @llmir_block_table(%kv, %s_1, %width)
// CHECK-NEXT: func.return
func.func @dead_read(%kv : !cache, %s : tensor<2xi32>) {
  %t, %l = llm.block_table %kv, %s : (!cache, tensor<2xi32>) -> (tensor<2x4xi32>, tensor<2xi32>)
  func.return
}

// A cache passed in and returned becomes a handle in the signature; calls of
// every shape share one callee; a dynamic table width travels as -1.
// CHECK-LABEL: func.func @several_shapes(%kv: !llvm.ptr, %k1: tensor<1x1x4x8xf32>, %k5: tensor<1x5x4x8xf32>, %s: tensor<1xi32>) -> (!llvm.ptr, tensor<1x1x4x8xf32>)
// CHECK: %width = arith.constant -1 : i64
// CHECK: %scale = arith.constant 1.250000e-01 : f32
// CHECK-NEXT: %causal = arith.constant true
// Absent window and soft cap lower to 0, "off".
// CHECK-NEXT: %sliding_window = arith.constant 0 : i32
// CHECK-NEXT: %logits_soft_cap = arith.constant 0.000000e+00 : f32
// CHECK: func.call @llmir_append_kv_f32(%kv, %k1_1, %k1_1, %s_1, %none_1, %layer)
// CHECK-NEXT: func.call @llmir_append_kv_f32(%kv, %k1_1, %k1_1, %s_1, %none_1, %layer_1)
// CHECK-NEXT: func.call @llmir_append_kv_f32(%kv, %k5_1, %k5_1, %s_1, %none_1, %layer)
// CHECK-NEXT: %t, %l = func.call @llmir_block_table(%kv, %s_1, %width)
// The table feeds attention in its dynamic form: no cast back and forth.
// CHECK-NEXT: %o = func.call @llmir_paged_attention_f32(%k1_1, %kv, %t, %l,
// CHECK: func.return %kv, %o_1 : !llvm.ptr, tensor<1x1x4x8xf32>
func.func @several_shapes(%kv : !cache, %k1 : tensor<1x1x4x8xf32>, %k5 : tensor<1x5x4x8xf32>,
                          %s : tensor<1xi32>) -> (!cache, tensor<1x1x4x8xf32>) {
  %a, %ia = llm.append_kv %kv, %k1, %k1, %s : (!cache, tensor<1x1x4x8xf32>, tensor<1x1x4x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x1xi32>)
  %b, %ib = llm.append_kv %a, %k1, %k1, %s {layer = 1 : i32} : (!cache, tensor<1x1x4x8xf32>, tensor<1x1x4x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x1xi32>)
  %c, %ic = llm.append_kv %b, %k5, %k5, %s : (!cache, tensor<1x5x4x8xf32>, tensor<1x5x4x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x5xi32>)
  %t, %l = llm.block_table %c, %s : (!cache, tensor<1xi32>) -> (tensor<1x?xi32>, tensor<1xi32>)
  %o = llm.paged_attention %k1, %c, %t, %l {scale = 0.125 : f32} : (tensor<1x1x4x8xf32>, !cache, tensor<1x?xi32>, tensor<1xi32>) -> tensor<1x1x4x8xf32>
  func.return %c, %o : !cache, tensor<1x1x4x8xf32>
}

// Sharing: prefix caching and the eviction policy become scalars of the
// create call; token ids travel as a tensor; fork and match are calls; a
// free's priority is a constant.
// CHECK-LABEL: func.func @sharing
// CHECK: %prefix_caching = arith.constant true
// CHECK-NEXT: %eviction = arith.constant 1 : i64
// CHECK: %priority = arith.constant 2 : i64
// CHECK: %n = func.call @llmir_match_prefix(%kv, %s_1, %prompt_1) : (!llvm.ptr, tensor<?xi32>, tensor<?x?xi32>) -> tensor<?xi32>
// CHECK-NEXT: %n_1 = tensor.cast %n : tensor<?xi32> to tensor<1xi32>
// CHECK-NEXT: %{{.*}} = func.call @llmir_append_kv_f32(%kv, %k_1, %k_1, %s_1, %tok_1, %layer)
// CHECK-NEXT: func.call @llmir_fork_sequence(%kv, %s_1, %child_1) : (!llvm.ptr, tensor<?xi32>, tensor<?xi32>) -> ()
// CHECK-NEXT: func.call @llmir_free_sequence(%kv, %s_1, %priority)
// CHECK-NEXT: func.return %n_1
!scache = !llm.paged_kv_cache<f32, 1, 4, 8, 16, 64>
func.func @sharing(%k : tensor<1x2x4x8xf32>, %s : tensor<1xi32>, %tok : tensor<1x2xi32>,
                   %prompt : tensor<1x8xi32>, %child : tensor<1xi32>) -> tensor<1xi32> {
  %kv = llm.create_kv_cache {num_blocks = 8 : i64, prefix_caching = true, eviction = "priority"} : !scache
  %kv1, %n = llm.match_prefix %kv, %s, %prompt : (!scache, tensor<1xi32>, tensor<1x8xi32>) -> (!scache, tensor<1xi32>)
  %kv2, %i = llm.append_kv %kv1, %k, %k, %s, %tok
      : (!scache, tensor<1x2x4x8xf32>, tensor<1x2x4x8xf32>, tensor<1xi32>, tensor<1x2xi32>) -> (!scache, tensor<1x2xi32>)
  %kv3 = llm.fork_sequence %kv2, %s, %child : (!scache, tensor<1xi32>, tensor<1xi32>) -> !scache
  %kv4 = llm.free_sequence %kv3, %s {priority = 2 : i32} : (!scache, tensor<1xi32>) -> !scache
  func.return %n : tensor<1xi32>
}

// Swapping lowers to two calls; the tier's size rides on the create call.
// CHECK-LABEL: func.func @swapping
// CHECK: %swap_blocks = arith.constant 16 : i64
// CHECK: func.call @llmir_swap_out(%kv, %s_1) : (!llvm.ptr, tensor<?xi32>) -> ()
// CHECK-NEXT: func.call @llmir_swap_in(%kv, %s_1) : (!llvm.ptr, tensor<?xi32>) -> ()
func.func @swapping(%s : tensor<1xi32>) {
  %kv = llm.create_kv_cache {num_blocks = 8 : i64, swap_blocks = 16 : i64} : !scache
  %kv1 = llm.swap_out %kv, %s : (!scache, tensor<1xi32>) -> !scache
  %kv2 = llm.swap_in %kv1, %s : (!scache, tensor<1xi32>) -> !scache
  func.return
}

// A reserved step lowers to one reservation call and a write call per layer.
// CHECK-LABEL: func.func @reserved_step
// CHECK: %num_tokens = arith.constant 1 : i64
// CHECK-NEXT: %width = arith.constant -1 : i64
// CHECK: %slots, %t, %l = func.call @llmir_reserve_slots(%kv, %s_1, %num_tokens, %width) : (!llvm.ptr, tensor<?xi32>, i64, i64) -> (tensor<?x?x?xi32>, tensor<?x?xi32>, tensor<?xi32>)
// CHECK-NEXT: func.call @llmir_write_kv_f32(%kv, %k_1, %k_1, %slots, %layer) : (!llvm.ptr, tensor<?x?x?x?xf32>, tensor<?x?x?x?xf32>, tensor<?x?x?xi32>, i32) -> ()
func.func @reserved_step(%kv : !scache, %k : tensor<1x1x4x8xf32>, %s : tensor<1xi32>) -> !scache {
  %kv1, %slots, %t, %l = llm.reserve_slots %kv, %s {num_tokens = 1 : i32}
      : (!scache, tensor<1xi32>) -> (!scache, tensor<1x1x1xi32>, tensor<1x?xi32>, tensor<1xi32>)
  %kv2 = llm.write_kv %kv1, %k, %k, %slots : (!scache, tensor<1x1x4x8xf32>, tensor<1x1x4x8xf32>, tensor<1x1x1xi32>) -> !scache
  func.return %kv2 : !scache
}

// A decode loop: the cache carried by scf.for becomes a handle; the ids are
// cast once, before the loop; the loop-carried tensor, cast on entry and
// back on exit of every step, is carried in its dynamic form instead, so the
// steps do no casting at all.
// CHECK-LABEL: func.func @decode_loop
// CHECK: %ids_1 = tensor.cast %ids : tensor<2xi32> to tensor<?xi32>
// CHECK: %x_1 = tensor.cast %x : tensor<2x1x4x8xbf16> to tensor<?x?x?x?xbf16>
// CHECK-NEXT: %y, %cache = scf.for %i = %lb to %ub step %one iter_args(%xi = %x_1, %ci = %c) -> (tensor<?x?x?x?xbf16>, !llvm.ptr) {
// CHECK-NEXT: %{{.*}} = func.call @llmir_append_kv_bf16(%ci, %xi, %xi, %ids_1, %none_1, %layer)
// CHECK-NEXT: %t, %l = func.call @llmir_block_table(%ci, %ids_1, %width)
// CHECK-NEXT: %o = func.call @llmir_paged_attention_bf16(%xi, %ci, %t, %l,
// CHECK-NEXT: scf.yield %o, %ci : tensor<?x?x?x?xbf16>, !llvm.ptr
// CHECK-NEXT: }
// CHECK-NEXT: %y_1 = tensor.cast %y : tensor<?x?x?x?xbf16> to tensor<2x1x4x8xbf16>
// CHECK-NEXT: func.return %y_1 : tensor<2x1x4x8xbf16>
!bcache = !llm.paged_kv_cache<bf16, 1, 4, 8, 16, 64>
func.func @decode_loop(%x : tensor<2x1x4x8xbf16>) -> tensor<2x1x4x8xbf16> {
  %c = llm.create_kv_cache {num_blocks = 8 : i64} : !bcache
  %ids = arith.constant dense<[0, 1]> : tensor<2xi32>
  %lb = arith.constant 0 : index
  %ub = arith.constant 4 : index
  %one = arith.constant 1 : index
  %y, %cache = scf.for %i = %lb to %ub step %one iter_args(%xi = %x, %ci = %c) -> (tensor<2x1x4x8xbf16>, !bcache) {
    %ca, %ba = llm.append_kv %ci, %xi, %xi, %ids : (!bcache, tensor<2x1x4x8xbf16>, tensor<2x1x4x8xbf16>, tensor<2xi32>) -> (!bcache, tensor<2x1xi32>)
    %t, %l = llm.block_table %ca, %ids : (!bcache, tensor<2xi32>) -> (tensor<2x4xi32>, tensor<2xi32>)
    %o = llm.paged_attention %xi, %ca, %t, %l : (tensor<2x1x4x8xbf16>, !bcache, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x4x8xbf16>
    scf.yield %o, %ca : tensor<2x1x4x8xbf16>, !bcache
  }
  func.return %y : tensor<2x1x4x8xbf16>
}

// A loop value that is also used as a static tensor inside the loop keeps
// its static type (the cast is not the only use).
// CHECK-LABEL: func.func @static_use_in_loop
// CHECK: scf.for {{.*}} iter_args(%xi = %x, %ci = %c) -> (tensor<1x1x4x8xf32>, !llvm.ptr) {
// CHECK-NEXT: %xi_1 = tensor.cast %xi : tensor<1x1x4x8xf32> to tensor<?x?x?x?xf32>
// CHECK: "test.op"(%xi) : (tensor<1x1x4x8xf32>) -> ()
!fcache = !llm.paged_kv_cache<f32, 1, 4, 8, 16, 64>
func.func @static_use_in_loop(%x : tensor<1x1x4x8xf32>) -> tensor<1x1x4x8xf32> {
  %c = llm.create_kv_cache {num_blocks = 8 : i64} : !fcache
  %ids = arith.constant dense<[0]> : tensor<1xi32>
  %lb = arith.constant 0 : index
  %ub = arith.constant 4 : index
  %one = arith.constant 1 : index
  %y, %cache = scf.for %i = %lb to %ub step %one iter_args(%xi = %x, %ci = %c) -> (tensor<1x1x4x8xf32>, !fcache) {
    %ca, %ba = llm.append_kv %ci, %xi, %xi, %ids : (!fcache, tensor<1x1x4x8xf32>, tensor<1x1x4x8xf32>, tensor<1xi32>) -> (!fcache, tensor<1x1xi32>)
    "test.op"(%xi) : (tensor<1x1x4x8xf32>) -> ()
    scf.yield %xi, %ca : tensor<1x1x4x8xf32>, !fcache
  }
  func.return %y : tensor<1x1x4x8xf32>
}

// Nested loops: the inner loop's casts fold first, which lets the outer loop
// carry the dynamic form too, in one lowering (the RUN line above checks
// that a second lowering changes nothing).
// CHECK-LABEL: func.func @nested_loops
// CHECK: scf.for %i = %lb to %ub step %st iter_args(%o = %q_1) -> (tensor<?x?x?x?xf32>)
// CHECK-NEXT: scf.for %j = %lb to %ub step %st iter_args(%p = %o) -> (tensor<?x?x?x?xf32>)
func.func @nested_loops(%kv : !cache, %q : tensor<2x1x8x8xf32>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) -> tensor<2x1x8x8xf32> {
  %lb = arith.constant 0 : index
  %ub = arith.constant 2 : index
  %st = arith.constant 1 : index
  %r = scf.for %i = %lb to %ub step %st iter_args(%o = %q) -> (tensor<2x1x8x8xf32>) {
    %r2 = scf.for %j = %lb to %ub step %st iter_args(%p = %o) -> (tensor<2x1x8x8xf32>) {
      %y = llm.paged_attention %p, %kv, %t, %l : (tensor<2x1x8x8xf32>, !cache, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x8x8xf32>
      scf.yield %y : tensor<2x1x8x8xf32>
    }
    scf.yield %r2 : tensor<2x1x8x8xf32>
  }
  func.return %r : tensor<2x1x8x8xf32>
}

// The declarations: private, one per callee, with the llmir.abi signatures.
// CHECK-DAG: func.func private @llmir_create_kv_cache_f16(i64, i64, i64, i64, i64, i64, i1, i64, i64, i64, i64, i64, i64) -> !llvm.ptr
// CHECK-DAG: func.func private @llmir_create_kv_cache_bf16(i64, i64, i64, i64, i64, i64, i1, i64, i64, i64, i64, i64, i64) -> !llvm.ptr
// CHECK-DAG: func.func private @llmir_append_kv_f16(!llvm.ptr, tensor<?x?x?x?xf16>, tensor<?x?x?x?xf16>, tensor<?xi32>, tensor<?x?xi32>, i32) -> tensor<?x?xi32>
// CHECK-DAG: func.func private @llmir_append_kv_f32(!llvm.ptr, tensor<?x?x?x?xf32>, tensor<?x?x?x?xf32>, tensor<?xi32>, tensor<?x?xi32>, i32) -> tensor<?x?xi32>
// CHECK-DAG: func.func private @llmir_append_kv_bf16(!llvm.ptr, tensor<?x?x?x?xbf16>, tensor<?x?x?x?xbf16>, tensor<?xi32>, tensor<?x?xi32>, i32) -> tensor<?x?xi32>
// CHECK-DAG: func.func private @llmir_fork_sequence(!llvm.ptr, tensor<?xi32>, tensor<?xi32>) -> ()
// CHECK-DAG: func.func private @llmir_match_prefix(!llvm.ptr, tensor<?xi32>, tensor<?x?xi32>) -> tensor<?xi32>
// CHECK-DAG: func.func private @llmir_block_table(!llvm.ptr, tensor<?xi32>, i64) -> (tensor<?x?xi32>, tensor<?xi32>)
// CHECK-DAG: func.func private @llmir_lookup_kv_f32(!llvm.ptr, tensor<?x?xi32>, tensor<?xi32>, i32, i64) -> (tensor<?x?x?x?xf32>, tensor<?x?x?x?xf32>)
// CHECK-DAG: func.func private @llmir_paged_attention_f32(tensor<?x?x?x?xf32>, !llvm.ptr, tensor<?x?xi32>, tensor<?xi32>, i32, f32, i1, i32, f32, i32) -> tensor<?x?x?x?xf32>
// CHECK-DAG: func.func private @llmir_paged_attention_bf16(tensor<?x?x?x?xbf16>, !llvm.ptr, tensor<?x?xi32>, tensor<?xi32>, i32, f32, i1, i32, f32, i32) -> tensor<?x?x?x?xbf16>
// CHECK-DAG: func.func private @llmir_free_sequence(!llvm.ptr, tensor<?xi32>, i64) -> ()
// CHECK-NOT: func.func private @llmir_append_kv_f32

