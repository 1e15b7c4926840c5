// The seed example (examples/seed.mlir) parses as written, round-trips through
// the generic form, and the passes accept it.
// RUN: xdsl-opt %examples/seed.mlir | filecheck %s
// RUN: xdsl-opt %examples/seed.mlir --print-op-generic | xdsl-opt | filecheck %s
// RUN: xdsl-opt %examples/seed.mlir -p llm-verify-kv-cache | filecheck %s

// CHECK:      func.func @decode_step(%kv_cache: !llm.paged_kv_cache<f16, 12, 16, 64, 16, 4096>
// CHECK-NEXT:   %new_kv, %block_indices = llm.append_kv %kv_cache, %keys, %values, %seq_ids {block_size = 16 : i32, max_seq_len = 4096 : i32} : (!llm.paged_kv_cache<f16, 12, 16, 64, 16, 4096>, tensor<2x1x16x64xf16>, tensor<2x1x16x64xf16>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 12, 16, 64, 16, 4096>, tensor<2x1xi32>)
// CHECK-NEXT:   %block_table, %seq_lens = llm.block_table %new_kv, %seq_ids : (!llm.paged_kv_cache<f16, 12, 16, 64, 16, 4096>, tensor<2xi32>) -> (tensor<2x128xi32>, tensor<2xi32>)
// CHECK-NEXT:   %output = llm.paged_attention %query, %new_kv, %block_table, %seq_lens {num_heads = 16 : i32, head_dim = 64 : i32, scale = 1.250000e-01 : f32} : (tensor<2x1x16x64xf16>, !llm.paged_kv_cache<f16, 12, 16, 64, 16, 4096>, tensor<2x128xi32>, tensor<2xi32>) -> tensor<2x1x16x64xf16>
// CHECK-NEXT:   func.return %new_kv, %output
