// The seed example of LLMIR_KV_CACHE.md, with one fix: the seed used a single
// value %block_indices both as the append's tensor<2x1xi32> result and as
// paged_attention's tensor<2x128xi32> block table, which cannot type-check.
// Here the block table and sequence lengths come from llm.block_table.

!kv_cache_t = !llm.paged_kv_cache<f16, 12, 16, 64, 16, 4096>

func.func @decode_step(%kv_cache : !kv_cache_t,
                       %keys : tensor<2x1x16x64xf16>,
                       %values : tensor<2x1x16x64xf16>,
                       %seq_ids : tensor<2xi32>,
                       %query : tensor<2x1x16x64xf16>)
    -> (!kv_cache_t, tensor<2x1x16x64xf16>) {
  // Append key-value pairs to the cache
  %new_kv, %block_indices = llm.append_kv %kv_cache, %keys, %values, %seq_ids {
    block_size = 16 : i32,
    max_seq_len = 4096 : i32
  } : (!kv_cache_t, tensor<2x1x16x64xf16>, tensor<2x1x16x64xf16>, tensor<2xi32>)
      -> (!kv_cache_t, tensor<2x1xi32>)

  // The block table attention reads (the fix: not %block_indices)
  %block_table, %seq_lens = llm.block_table %new_kv, %seq_ids
      : (!kv_cache_t, tensor<2xi32>) -> (tensor<2x128xi32>, tensor<2xi32>)

  // Perform paged attention with the KV cache
  %output = llm.paged_attention %query, %new_kv, %block_table, %seq_lens {
    num_heads = 16 : i32,
    head_dim = 64 : i32,
    scale = 0.125 : f32
  } : (tensor<2x1x16x64xf16>, !kv_cache_t, tensor<2x128xi32>, tensor<2xi32>)
      -> tensor<2x1x16x64xf16>

  func.return %new_kv, %output : !kv_cache_t, tensor<2x1x16x64xf16>
}
