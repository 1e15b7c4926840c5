// RUN: xdsl-opt %s -p llm-kv-cache-stats | filecheck %s

!cache = !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

// One token per layer per sequence on both layers, then GQA decode attention:
//   bytes per token and layer = 2 (K,V) * 4 heads * 8 dims * 2 bytes = 128
//   tokens_appended    = 2 appends * (2 seqs * 1 token)      = 4
//   kv_bytes_written   = 4 * 128                              = 512
//   attention_flops    = 4 * 2 * 8 heads * 1 * (4*16) * 8     = 32768
//   kv_bytes_read      = attention 2 * 64 * 128 + lookup 2 * 20 * 128 = 16384 + 5120
// CHECK-LABEL: func.func @decode
// CHECK-SAME: attributes {llm.kv_stats = {tokens_appended = 4 : i64, kv_bytes_written = 512 : i64, attention_flops_max = 32768 : i64, kv_bytes_read_max = 21504 : i64}}
func.func @decode(%kv : !cache, %k : tensor<2x1x4x8xf16>, %s : tensor<2xi32>, %q : tensor<2x1x8x8xf32>) -> !cache {
  %kv1, %i1 = llm.append_kv %kv, %k, %k, %s {layer = 0 : i32} : (!cache, tensor<2x1x4x8xf16>, tensor<2x1x4x8xf16>, tensor<2xi32>) -> (!cache, tensor<2x1xi32>)
  %kv2, %i2 = llm.append_kv %kv1, %k, %k, %s {layer = 1 : i32} : (!cache, tensor<2x1x4x8xf16>, tensor<2x1x4x8xf16>, tensor<2xi32>) -> (!cache, tensor<2x1xi32>)
  %t, %l = llm.block_table %kv2, %s : (!cache, tensor<2xi32>) -> (tensor<2x4xi32>, tensor<2xi32>)
  %o = llm.paged_attention %q, %kv2, %t, %l : (tensor<2x1x8x8xf32>, !cache, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x8x8xf32>
  %kk, %vv = llm.lookup_kv %kv2, %t, %l : (!cache, tensor<2x4xi32>, tensor<2xi32>) -> (tensor<2x20x4x8xf16>, tensor<2x20x4x8xf16>)
  func.return %kv2 : !cache
}

// A dynamic batch makes the totals it feeds unknown; they are listed instead.
// CHECK-LABEL: func.func @dynamic
// CHECK-SAME: attributes {llm.kv_stats = {attention_flops_max = 0 : i64, dynamic = ["kv_bytes_read_max", "kv_bytes_written", "tokens_appended"]}}
func.func @dynamic(%kv : !cache, %k : tensor<?x1x4x8xf16>, %s : tensor<?xi32>) {
  %kv1, %i1 = llm.append_kv %kv, %k, %k, %s : (!cache, tensor<?x1x4x8xf16>, tensor<?x1x4x8xf16>, tensor<?xi32>) -> (!cache, tensor<?x1xi32>)
  %t, %l = llm.block_table %kv1, %s : (!cache, tensor<?xi32>) -> (tensor<?x4xi32>, tensor<?xi32>)
  %kk, %vv = llm.lookup_kv %kv1, %t, %l : (!cache, tensor<?x4xi32>, tensor<?xi32>) -> (tensor<?x64x4x8xf16>, tensor<?x64x4x8xf16>)
  func.return
}

// Functions without cache ops are left alone.
// CHECK-LABEL: func.func @no_cache()
// CHECK-NOT: llm.kv_stats
func.func @no_cache() {
  func.return
}

// A window with attention sinks: each query sees up to window + sinks keys.
//   attention_flops = 4 * 1 * 8 heads * 1 * (16 + 4) * 8 = 5120
// CHECK-LABEL: func.func @sinks
// CHECK-SAME: attention_flops_max = 5120 : i64
func.func @sinks(%kv : !cache, %q : tensor<1x1x8x8xf32>, %t : tensor<1x4xi32>, %l : tensor<1xi32>) -> tensor<1x1x8x8xf32> {
  %o = llm.paged_attention %q, %kv, %t, %l {sliding_window = 16 : i32, sink_tokens = 4 : i32} : (tensor<1x1x8x8xf32>, !cache, tensor<1x4xi32>, tensor<1xi32>) -> tensor<1x1x8x8xf32>
  func.return %o : tensor<1x1x8x8xf32>
}
