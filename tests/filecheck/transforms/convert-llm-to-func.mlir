// RUN: xdsl-opt %s -p convert-llm-to-func | filecheck %s
// The lowered module verifies, round-trips, and lowering it again is a no-op:
// RUN: xdsl-opt %s -p convert-llm-to-func | xdsl-opt | filecheck %s
// RUN: xdsl-opt %s -p convert-llm-to-func > %t.mlir && xdsl-opt %t.mlir -p convert-llm-to-func | diff %t.mlir -
// No llm op survives; only the cache type does:
// RUN: xdsl-opt %s -p convert-llm-to-func | filecheck %s --check-prefix=NOOPS

// NOOPS-NOT: llm.{{[a-z_]+}} %
// NOOPS-NOT: "llm.

!cache = !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

// Every op, each attribute becoming a trailing constant operand.
// CHECK-LABEL: func.func @every_op
func.func @every_op(%keys : tensor<2x3x4x8xf16>, %seq_ids : tensor<2xi32>,
                    %query : tensor<2x3x8x8xf32>) -> (tensor<2x3x8x8xf32>, tensor<2x64x4x8xf32>) {
  // CHECK-NEXT: %num_blocks = arith.constant 32 : i64
  // CHECK-NEXT: %kv = func.call @llmir_create_kv_cache__i64__kv_f16_2_4_8_16_64(%num_blocks) : (i64) -> !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
  %kv = llm.create_kv_cache {num_blocks = 32 : i64} : !cache

  // CHECK-NEXT: %layer = arith.constant 1 : i32
  // CHECK-NEXT: %kv1, %idx = func.call @llmir_append_kv__kv_f16_2_4_8_16_64_t2x3x4x8xf16_t2x3x4x8xf16_t2xi32_i32__kv_f16_2_4_8_16_64_t2x3xi32(%kv, %keys, %keys, %seq_ids, %layer)
  %kv1, %idx = llm.append_kv %kv, %keys, %keys, %seq_ids {layer = 1 : i32, block_size = 16 : i32, max_seq_len = 64 : i32}
      : (!cache, tensor<2x3x4x8xf16>, tensor<2x3x4x8xf16>, tensor<2xi32>) -> (!cache, tensor<2x3xi32>)

  // CHECK-NEXT: %table, %lens = func.call @llmir_block_table__kv_f16_2_4_8_16_64_t2xi32__t2x4xi32_t2xi32(%kv1, %seq_ids)
  %table, %lens = llm.block_table %kv1, %seq_ids : (!cache, tensor<2xi32>) -> (tensor<2x4xi32>, tensor<2xi32>)

  // CHECK-NEXT: %layer_1 = arith.constant 1 : i32
  // CHECK-NEXT: %k, %v = func.call @llmir_lookup_kv__kv_f16_2_4_8_16_64_t2x4xi32_t2xi32_i32__t2x64x4x8xf32_t2x64x4x8xf32(%kv1, %table, %lens, %layer_1)
  %k, %v = llm.lookup_kv %kv1, %table, %lens {layer = 1 : i32}
      : (!cache, tensor<2x4xi32>, tensor<2xi32>) -> (tensor<2x64x4x8xf32>, tensor<2x64x4x8xf32>)

  // The default scale 1/sqrt(8) is made explicit; causal = false is kept.
  // CHECK-NEXT: %layer_2 = arith.constant 1 : i32
  // CHECK-NEXT: %scale = arith.constant 0.353553{{[0-9]*}} : f32
  // CHECK-NEXT: %causal = arith.constant false
  // CHECK-NEXT: %sliding_window = arith.constant 8 : i32
  // CHECK-NEXT: %logits_soft_cap = arith.constant 5.000000e+01 : f32
  // CHECK-NEXT: %out = func.call @llmir_paged_attention__t2x3x8x8xf32_kv_f16_2_4_8_16_64_t2x4xi32_t2xi32_i32_f32_i1_i32_f32__t2x3x8x8xf32(%query, %kv1, %table, %lens, %layer_2, %scale, %causal, %sliding_window, %logits_soft_cap)
  %out = llm.paged_attention %query, %kv1, %table, %lens {layer = 1 : i32, causal = false, sliding_window = 8 : i32, logits_soft_cap = 50.0 : f32}
      : (tensor<2x3x8x8xf32>, !cache, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x3x8x8xf32>

  // CHECK-NEXT: %kv2 = func.call @llmir_free_sequence__kv_f16_2_4_8_16_64_t2xi32__kv_f16_2_4_8_16_64(%kv1, %seq_ids)
  %kv2 = llm.free_sequence %kv1, %seq_ids : (!cache, tensor<2xi32>) -> !cache
  func.return %out, %k : tensor<2x3x8x8xf32>, tensor<2x64x4x8xf32>
}

// Reads whose results are unused are dead, and the rewriter drops them.
// CHECK-LABEL: func.func @dead_read
// CHECK-NEXT: func.return
func.func @dead_read(%kv : !cache, %s : tensor<2xi32>) {
  %t, %l = llm.block_table %kv, %s : (!cache, tensor<2xi32>) -> (tensor<2x4xi32>, tensor<2xi32>)
  func.return
}

// Two call sites with the same signature share one declaration; a different
// shape gets its own, and an explicit scale is passed through unchanged.
// CHECK-LABEL: func.func @several_shapes
func.func @several_shapes(%kv : !cache, %k1 : tensor<1x1x4x8xf32>, %k5 : tensor<1x5x4x8xf32>,
                          %s : tensor<1xi32>) -> (!cache, tensor<1x1x4x8xf32>) {
  // CHECK: func.call @llmir_append_kv__kv_f16_2_4_8_16_64_t1x1x4x8xf32_t1x1x4x8xf32_t1xi32_i32__kv_f16_2_4_8_16_64_t1x1xi32(
  // CHECK: func.call @llmir_append_kv__kv_f16_2_4_8_16_64_t1x1x4x8xf32_t1x1x4x8xf32_t1xi32_i32__kv_f16_2_4_8_16_64_t1x1xi32(
  // CHECK: func.call @llmir_append_kv__kv_f16_2_4_8_16_64_t1x5x4x8xf32_t1x5x4x8xf32_t1xi32_i32__kv_f16_2_4_8_16_64_t1x5xi32(
  %a, %ia = llm.append_kv %kv, %k1, %k1, %s : (!cache, tensor<1x1x4x8xf32>, tensor<1x1x4x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x1xi32>)
  %b, %ib = llm.append_kv %a, %k1, %k1, %s {layer = 1 : i32} : (!cache, tensor<1x1x4x8xf32>, tensor<1x1x4x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x1xi32>)
  %c, %ic = llm.append_kv %b, %k5, %k5, %s : (!cache, tensor<1x5x4x8xf32>, tensor<1x5x4x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x5xi32>)
  // CHECK: func.call @llmir_block_table__kv_f16_2_4_8_16_64_t1xi32__t1xdxi32_t1xi32(
  // Absent window and soft cap lower to 0, "off".
  // CHECK: %scale = arith.constant 1.250000e-01 : f32
  // CHECK-NEXT: %causal = arith.constant true
  // CHECK-NEXT: %sliding_window = arith.constant 0 : i32
  // CHECK-NEXT: %logits_soft_cap = arith.constant 0.000000e+00 : f32
  %t, %l = llm.block_table %c, %s : (!cache, tensor<1xi32>) -> (tensor<1x?xi32>, tensor<1xi32>)
  %o = llm.paged_attention %k1, %c, %t, %l {scale = 0.125 : f32} : (tensor<1x1x4x8xf32>, !cache, tensor<1x?xi32>, tensor<1xi32>) -> tensor<1x1x4x8xf32>
  func.return %c, %o : !cache, tensor<1x1x4x8xf32>
}

// The declarations: private, one per distinct signature, at module level.
// CHECK-DAG: func.func private @llmir_create_kv_cache__i64__kv_f16_2_4_8_16_64(i64) -> !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
// CHECK-DAG: func.func private @llmir_append_kv__kv_f16_2_4_8_16_64_t2x3x4x8xf16_t2x3x4x8xf16_t2xi32_i32__kv_f16_2_4_8_16_64_t2x3xi32(
// CHECK-DAG: func.func private @llmir_append_kv__kv_f16_2_4_8_16_64_t1x1x4x8xf32_t1x1x4x8xf32_t1xi32_i32__kv_f16_2_4_8_16_64_t1x1xi32(
// CHECK-DAG: func.func private @llmir_append_kv__kv_f16_2_4_8_16_64_t1x5x4x8xf32_t1x5x4x8xf32_t1xi32_i32__kv_f16_2_4_8_16_64_t1x5xi32(
// CHECK-DAG: func.func private @llmir_block_table__kv_f16_2_4_8_16_64_t2xi32__t2x4xi32_t2xi32(
// CHECK-DAG: func.func private @llmir_lookup_kv__kv_f16_2_4_8_16_64_t2x4xi32_t2xi32_i32__t2x64x4x8xf32_t2x64x4x8xf32(
// CHECK-DAG: func.func private @llmir_paged_attention__t2x3x8x8xf32_kv_f16_2_4_8_16_64_t2x4xi32_t2xi32_i32_f32_i1_i32_f32__t2x3x8x8xf32(
// CHECK-DAG: func.func private @llmir_free_sequence__kv_f16_2_4_8_16_64_t2xi32__kv_f16_2_4_8_16_64(
// CHECK-NOT: func.func private @llmir_append_kv__kv_f16_2_4_8_16_64_t1x1x4x8xf32
