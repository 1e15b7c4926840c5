// Generating far past the pool: a cache that keeps each sequence's first 4
// tokens (attention sinks) and its last 16 (the window), giving every block
// wholly between back to the pool as decode proceeds (StreamingLLM).
//
// Two sequences prefill 10 tokens each, then decode 200 steps through a
// 2-layer "model" of paged attention alone, with the matching mask
// (sliding_window = 16, sink_tokens = 4).  They end at 210 tokens each: 420
// tokens, 105 blocks of 4 unpruned, in a pool of 16 blocks (64 slots).  A
// sequence never holds more than ceil(4/4) + ceil(16/4) + 1 = 6 blocks.
//
// Run it:   llmir-run examples/streaming.mlir --random-args 0 --stats --check
// (--check runs the same program on the dense reference, which never
// prunes: the outputs agree because the mask never reads a pruned token.)

!cache = !llm.paged_kv_cache<f32, 2, 2, 16, 4, 256>

func.func @main(%prompt : tensor<2x10x2x16xf32>, %x0 : tensor<2x1x2x16xf32>)
    -> (tensor<2x1x2x16xf32>, tensor<2x10x2x16xf32>, tensor<2xi32>) {
  %empty = llm.create_kv_cache {num_blocks = 16 : i64, window_tokens = 16 : i64, sink_tokens = 4 : i64} : !cache
  %ids = arith.constant dense<[0, 1]> : tensor<2xi32>

  // --- prefill both prompts ------------------------------------------------------
  %c0, %b0 = llm.append_kv %empty, %prompt, %prompt, %ids {layer = 0 : i32}
      : (!cache, tensor<2x10x2x16xf32>, tensor<2x10x2x16xf32>, tensor<2xi32>)
      -> (!cache, tensor<2x10xi32>)
  %t0, %l0 = llm.block_table %c0, %ids
      : (!cache, tensor<2xi32>) -> (tensor<2x?xi32>, tensor<2xi32>)
  %h0 = llm.paged_attention %prompt, %c0, %t0, %l0 {layer = 0 : i32, sliding_window = 16 : i32, sink_tokens = 4 : i32}
      : (tensor<2x10x2x16xf32>, !cache, tensor<2x?xi32>, tensor<2xi32>)
      -> tensor<2x10x2x16xf32>
  %c1, %b1 = llm.append_kv %c0, %h0, %h0, %ids {layer = 1 : i32}
      : (!cache, tensor<2x10x2x16xf32>, tensor<2x10x2x16xf32>, tensor<2xi32>)
      -> (!cache, tensor<2x10xi32>)
  %o0 = llm.paged_attention %h0, %c1, %t0, %l0 {layer = 1 : i32, sliding_window = 16 : i32, sink_tokens = 4 : i32}
      : (tensor<2x10x2x16xf32>, !cache, tensor<2x?xi32>, tensor<2xi32>)
      -> tensor<2x10x2x16xf32>

  // --- decode: 200 steps, far past the pool's 64 slots ------------------------------
  %lb = arith.constant 0 : index
  %ub = arith.constant 200 : index
  %step = arith.constant 1 : index
  %x, %cache = scf.for %i = %lb to %ub step %step
      iter_args(%xi = %x0, %ci = %c1) -> (tensor<2x1x2x16xf32>, !cache) {
    %ca, %ba = llm.append_kv %ci, %xi, %xi, %ids {layer = 0 : i32}
        : (!cache, tensor<2x1x2x16xf32>, tensor<2x1x2x16xf32>, tensor<2xi32>)
        -> (!cache, tensor<2x1xi32>)
    %t, %l = llm.block_table %ca, %ids
        : (!cache, tensor<2xi32>) -> (tensor<2x?xi32>, tensor<2xi32>)
    %y = llm.paged_attention %xi, %ca, %t, %l {layer = 0 : i32, sliding_window = 16 : i32, sink_tokens = 4 : i32}
        : (tensor<2x1x2x16xf32>, !cache, tensor<2x?xi32>, tensor<2xi32>)
        -> tensor<2x1x2x16xf32>
    %cb, %bb = llm.append_kv %ca, %y, %y, %ids {layer = 1 : i32}
        : (!cache, tensor<2x1x2x16xf32>, tensor<2x1x2x16xf32>, tensor<2xi32>)
        -> (!cache, tensor<2x1xi32>)
    %z = llm.paged_attention %y, %cb, %t, %l {layer = 1 : i32, sliding_window = 16 : i32, sink_tokens = 4 : i32}
        : (tensor<2x1x2x16xf32>, !cache, tensor<2x?xi32>, tensor<2xi32>)
        -> tensor<2x1x2x16xf32>
    scf.yield %z, %cb : tensor<2x1x2x16xf32>, !cache
  }
  %tf, %lens = llm.block_table %cache, %ids
      : (!cache, tensor<2xi32>) -> (tensor<2x?xi32>, tensor<2xi32>)
  func.return %x, %o0, %lens : tensor<2x1x2x16xf32>, tensor<2x10x2x16xf32>, tensor<2xi32>
}
