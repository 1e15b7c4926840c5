// Sharing a system prompt, then parallel sampling, over one prefix-caching
// cache (1 layer of paged attention, no weights).
//
//  1. Request 0 stores the 32-token system prompt and its own 8 tokens,
//     naming every token (`token_ids`): full blocks are indexed.
//  2. Requests 1-3 arrive with the same system prompt and 8 tokens each of
//     their own.  `llm.match_prefix` attaches the cached system-prompt
//     blocks (2 of block 16: 32 tokens per request, returned in %cached),
//     so only each request's own 8 tokens are appended.  All four attend.
//  3. Request 0 forks into two samples (ids 4 and 5): they share its blocks
//     until each appends its first sampled token, which copies the one
//     partly filled block.  Both attend; everything is freed.
//
// Run it:   llmir-run examples/shared_prefix.mlir --random-args 0 --stats --check
// Lowered:  llmir-run examples/shared_prefix.mlir -p convert-llm-to-func --random-args 0 --stats
//
// --stats shows 96 of the 121 queried prompt tokens served from the cache
// (3 x 32), 10 blocks saved by sharing, and the two copy-on-write copies.

!cache = !llm.paged_kv_cache<f32, 1, 2, 16, 16, 256>

func.func @main(%system : tensor<1x32x2x16xf32>,
                %own0 : tensor<1x8x2x16xf32>,
                %own : tensor<3x8x2x16xf32>,
                %query : tensor<4x1x2x16xf32>,
                %sampled : tensor<2x1x2x16xf32>)
    -> (tensor<4x1x2x16xf32>, tensor<2x1x2x16xf32>, tensor<3xi32>) {
  %empty = llm.create_kv_cache {num_blocks = 32 : i64, prefix_caching = true} : !cache

  // --- request 0: system prompt + its own tokens --------------------------------
  %id0 = arith.constant dense<0> : tensor<1xi32>
  %system_tokens = arith.constant dense<[[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                           17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32]]> : tensor<1x32xi32>
  %own0_tokens = arith.constant dense<[[100, 101, 102, 103, 104, 105, 106, 107]]> : tensor<1x8xi32>
  %c0, %b0 = llm.append_kv %empty, %system, %system, %id0, %system_tokens
      : (!cache, tensor<1x32x2x16xf32>, tensor<1x32x2x16xf32>, tensor<1xi32>, tensor<1x32xi32>)
      -> (!cache, tensor<1x32xi32>)
  %c1, %b1 = llm.append_kv %c0, %own0, %own0, %id0, %own0_tokens
      : (!cache, tensor<1x8x2x16xf32>, tensor<1x8x2x16xf32>, tensor<1xi32>, tensor<1x8xi32>)
      -> (!cache, tensor<1x8xi32>)

  // --- requests 1-3: match the system prompt, append only their own tokens -----
  %ids = arith.constant dense<[1, 2, 3]> : tensor<3xi32>
  %prompts = arith.constant dense<[
      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
       17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
       200, 201, 202, 203, 204, 205, 206, 207, -1],
      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
       17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
       300, 301, 302, 303, 304, 305, 306, 307, 308],
      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
       17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
       400, 401, 402, 403, 404, 405, 406, 407, -1]]> : tensor<3x41xi32>
  %c2, %cached = llm.match_prefix %c1, %ids, %prompts
      : (!cache, tensor<3xi32>, tensor<3x41xi32>) -> (!cache, tensor<3xi32>)
  %own_tokens = arith.constant dense<[[200, 201, 202, 203, 204, 205, 206, 207],
                                      [300, 301, 302, 303, 304, 305, 306, 307],
                                      [400, 401, 402, 403, 404, 405, 406, 407]]> : tensor<3x8xi32>
  %c3, %b3 = llm.append_kv %c2, %own, %own, %ids, %own_tokens
      : (!cache, tensor<3x8x2x16xf32>, tensor<3x8x2x16xf32>, tensor<3xi32>, tensor<3x8xi32>)
      -> (!cache, tensor<3x8xi32>)

  // --- all four attend (one query token each) ------------------------------------
  %all = arith.constant dense<[0, 1, 2, 3]> : tensor<4xi32>
  %table, %lens = llm.block_table %c3, %all
      : (!cache, tensor<4xi32>) -> (tensor<4x16xi32>, tensor<4xi32>)
  %out = llm.paged_attention %query, %c3, %table, %lens
      : (tensor<4x1x2x16xf32>, !cache, tensor<4x16xi32>, tensor<4xi32>) -> tensor<4x1x2x16xf32>

  // --- parallel sampling: request 0 forks into samples 4 and 5 --------------------
  %parents = arith.constant dense<[0, 0]> : tensor<2xi32>
  %samples = arith.constant dense<[4, 5]> : tensor<2xi32>
  %c4 = llm.fork_sequence %c3, %parents, %samples
      : (!cache, tensor<2xi32>, tensor<2xi32>) -> !cache
  %c5, %b5 = llm.append_kv %c4, %sampled, %sampled, %samples
      : (!cache, tensor<2x1x2x16xf32>, tensor<2x1x2x16xf32>, tensor<2xi32>)
      -> (!cache, tensor<2x1xi32>)
  %st, %sl = llm.block_table %c5, %samples
      : (!cache, tensor<2xi32>) -> (tensor<2x16xi32>, tensor<2xi32>)
  %sample_out = llm.paged_attention %sampled, %c5, %st, %sl
      : (tensor<2x1x2x16xf32>, !cache, tensor<2x16xi32>, tensor<2xi32>) -> tensor<2x1x2x16xf32>
  func.return %out, %sample_out, %cached : tensor<4x1x2x16xf32>, tensor<2x1x2x16xf32>, tensor<3xi32>
}
