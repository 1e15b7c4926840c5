// RUN: xdsl-opt %s -p llm-verify-kv-cache --verify-diagnostics --split-input-file | filecheck %s

!cache = !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

// Each version used before the append that supersedes it: accepted unchanged.
// CHECK-LABEL: func.func @threaded
// CHECK: llm.append_kv %kv,
// CHECK: llm.append_kv %kv1,
func.func @threaded(%kv : !cache, %k : tensor<2x1x4x8xf16>, %s : tensor<2xi32>) -> !cache {
  %t0, %l0 = llm.block_table %kv, %s : (!cache, tensor<2xi32>) -> (tensor<2x4xi32>, tensor<2xi32>)
  %kv1, %i1 = llm.append_kv %kv, %k, %k, %s : (!cache, tensor<2x1x4x8xf16>, tensor<2x1x4x8xf16>, tensor<2xi32>) -> (!cache, tensor<2x1xi32>)
  %kv2, %i2 = llm.append_kv %kv1, %k, %k, %s {layer = 1 : i32} : (!cache, tensor<2x1x4x8xf16>, tensor<2x1x4x8xf16>, tensor<2xi32>) -> (!cache, tensor<2x1xi32>)
  func.return %kv2 : !cache
}

// -----

!cache = !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

func.func @stale_read(%kv : !cache, %k : tensor<2x1x4x8xf16>, %s : tensor<2xi32>) {
  %kv1, %i1 = llm.append_kv %kv, %k, %k, %s : (!cache, tensor<2x1x4x8xf16>, tensor<2x1x4x8xf16>, tensor<2xi32>) -> (!cache, tensor<2x1xi32>)
  %t, %l = llm.block_table %kv, %s : (!cache, tensor<2xi32>) -> (tensor<2x4xi32>, tensor<2xi32>)
  func.return
}

// CHECK: %kv is used by llm.block_table after llm.append_kv superseded it; use the new cache version

// -----

!cache = !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

func.func @stale_return(%kv : !cache, %k : tensor<2x1x4x8xf16>, %s : tensor<2xi32>) -> !cache {
  %kv1, %i1 = llm.append_kv %kv, %k, %k, %s : (!cache, tensor<2x1x4x8xf16>, tensor<2x1x4x8xf16>, tensor<2xi32>) -> (!cache, tensor<2x1xi32>)
  func.return %kv : !cache
}

// CHECK: %kv is used by func.return after llm.append_kv superseded it; use the new cache version

// -----

!cache = !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

func.func @fork(%kv : !cache, %k : tensor<2x1x4x8xf16>, %s : tensor<2xi32>) {
  %kv1, %i1 = llm.append_kv %kv, %k, %k, %s : (!cache, tensor<2x1x4x8xf16>, tensor<2x1x4x8xf16>, tensor<2xi32>) -> (!cache, tensor<2x1xi32>)
  %kv2, %i2 = llm.append_kv %kv, %k, %k, %s {layer = 1 : i32} : (!cache, tensor<2x1x4x8xf16>, tensor<2x1x4x8xf16>, tensor<2xi32>) -> (!cache, tensor<2x1xi32>)
  func.return
}

// CHECK: %kv is written by both llm.append_kv and llm.append_kv; the second write must use the first's result

// -----

!cache = !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

func.func @use_after_free(%kv : !cache, %s : tensor<2xi32>) {
  %kv1 = llm.free_sequence %kv, %s : (!cache, tensor<2xi32>) -> !cache
  %t, %l = llm.block_table %kv, %s : (!cache, tensor<2xi32>) -> (tensor<2x4xi32>, tensor<2xi32>)
  func.return
}

// CHECK: %kv is used by llm.block_table after llm.free_sequence superseded it; use the new cache version
