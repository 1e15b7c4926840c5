// A small decoder: a 2-layer model whose "layers" are paged attention alone
// (no weights), over a shared f16 KV cache.
//
//  1. Prefill three prompts of different lengths (7, 3 and 12 tokens), one
//     sequence at a time: each layer appends its input as keys and values,
//     then runs causal attention; its output is the next layer's input (the
//     last layer's output is returned for the third prompt).
//  2. Decode: 16 steps for the batch of all three sequences in an scf.for.
//     Each step appends the step's hidden state to layer 0, attends, feeds
//     the result to layer 1, and feeds layer 1's output to the next step.
//
// Run it:   llmir-run examples/decode.mlir --random-args 0 --stats --check
// Lowered:  llmir-run examples/decode.mlir -p convert-llm-to-func --random-args 0

!cache = !llm.paged_kv_cache<f16, 2, 4, 32, 16, 256>

func.func @main(%prompt0 : tensor<1x7x4x32xf32>,
                %prompt1 : tensor<1x3x4x32xf32>,
                %prompt2 : tensor<1x12x4x32xf32>,
                %x0 : tensor<3x1x4x32xf32>)
    -> (tensor<3x1x4x32xf32>, tensor<1x12x4x32xf32>, tensor<3xi32>) {
  %empty = llm.create_kv_cache {num_blocks = 64 : i64} : !cache

  // --- prefill, one prompt at a time ------------------------------------------
  %id0 = arith.constant dense<0> : tensor<1xi32>
  %id1 = arith.constant dense<1> : tensor<1xi32>
  %id2 = arith.constant dense<2> : tensor<1xi32>

  %c0a, %b0a = llm.append_kv %empty, %prompt0, %prompt0, %id0 {layer = 0 : i32}
      : (!cache, tensor<1x7x4x32xf32>, tensor<1x7x4x32xf32>, tensor<1xi32>)
      -> (!cache, tensor<1x7xi32>)
  %t0, %l0 = llm.block_table %c0a, %id0
      : (!cache, tensor<1xi32>) -> (tensor<1x16xi32>, tensor<1xi32>)
  %h0 = llm.paged_attention %prompt0, %c0a, %t0, %l0 {layer = 0 : i32}
      : (tensor<1x7x4x32xf32>, !cache, tensor<1x16xi32>, tensor<1xi32>)
      -> tensor<1x7x4x32xf32>
  %c0b, %b0b = llm.append_kv %c0a, %h0, %h0, %id0 {layer = 1 : i32}
      : (!cache, tensor<1x7x4x32xf32>, tensor<1x7x4x32xf32>, tensor<1xi32>)
      -> (!cache, tensor<1x7xi32>)
  %o0 = llm.paged_attention %h0, %c0b, %t0, %l0 {layer = 1 : i32}
      : (tensor<1x7x4x32xf32>, !cache, tensor<1x16xi32>, tensor<1xi32>)
      -> tensor<1x7x4x32xf32>

  %c1a, %b1a = llm.append_kv %c0b, %prompt1, %prompt1, %id1 {layer = 0 : i32}
      : (!cache, tensor<1x3x4x32xf32>, tensor<1x3x4x32xf32>, tensor<1xi32>)
      -> (!cache, tensor<1x3xi32>)
  %t1, %l1 = llm.block_table %c1a, %id1
      : (!cache, tensor<1xi32>) -> (tensor<1x16xi32>, tensor<1xi32>)
  %h1 = llm.paged_attention %prompt1, %c1a, %t1, %l1 {layer = 0 : i32}
      : (tensor<1x3x4x32xf32>, !cache, tensor<1x16xi32>, tensor<1xi32>)
      -> tensor<1x3x4x32xf32>
  %c1b, %b1b = llm.append_kv %c1a, %h1, %h1, %id1 {layer = 1 : i32}
      : (!cache, tensor<1x3x4x32xf32>, tensor<1x3x4x32xf32>, tensor<1xi32>)
      -> (!cache, tensor<1x3xi32>)
  %o1 = llm.paged_attention %h1, %c1b, %t1, %l1 {layer = 1 : i32}
      : (tensor<1x3x4x32xf32>, !cache, tensor<1x16xi32>, tensor<1xi32>)
      -> tensor<1x3x4x32xf32>

  %c2a, %b2a = llm.append_kv %c1b, %prompt2, %prompt2, %id2 {layer = 0 : i32}
      : (!cache, tensor<1x12x4x32xf32>, tensor<1x12x4x32xf32>, tensor<1xi32>)
      -> (!cache, tensor<1x12xi32>)
  %t2, %l2 = llm.block_table %c2a, %id2
      : (!cache, tensor<1xi32>) -> (tensor<1x16xi32>, tensor<1xi32>)
  %h2 = llm.paged_attention %prompt2, %c2a, %t2, %l2 {layer = 0 : i32}
      : (tensor<1x12x4x32xf32>, !cache, tensor<1x16xi32>, tensor<1xi32>)
      -> tensor<1x12x4x32xf32>
  %c2b, %b2b = llm.append_kv %c2a, %h2, %h2, %id2 {layer = 1 : i32}
      : (!cache, tensor<1x12x4x32xf32>, tensor<1x12x4x32xf32>, tensor<1xi32>)
      -> (!cache, tensor<1x12xi32>)
  %o2 = llm.paged_attention %h2, %c2b, %t2, %l2 {layer = 1 : i32}
      : (tensor<1x12x4x32xf32>, !cache, tensor<1x16xi32>, tensor<1xi32>)
      -> tensor<1x12x4x32xf32>

  // --- decode: 16 steps for the whole batch -------------------------------------
  %ids = arith.constant dense<[0, 1, 2]> : tensor<3xi32>
  %lb = arith.constant 0 : index
  %ub = arith.constant 16 : index
  %step = arith.constant 1 : index
  %x, %cache = scf.for %i = %lb to %ub step %step
      iter_args(%xi = %x0, %ci = %c2b) -> (tensor<3x1x4x32xf32>, !cache) {
    %ca, %ba = llm.append_kv %ci, %xi, %xi, %ids {layer = 0 : i32}
        : (!cache, tensor<3x1x4x32xf32>, tensor<3x1x4x32xf32>, tensor<3xi32>)
        -> (!cache, tensor<3x1xi32>)
    %t, %l = llm.block_table %ca, %ids
        : (!cache, tensor<3xi32>) -> (tensor<3x16xi32>, tensor<3xi32>)
    %y = llm.paged_attention %xi, %ca, %t, %l {layer = 0 : i32}
        : (tensor<3x1x4x32xf32>, !cache, tensor<3x16xi32>, tensor<3xi32>)
        -> tensor<3x1x4x32xf32>
    %cb, %bb = llm.append_kv %ca, %y, %y, %ids {layer = 1 : i32}
        : (!cache, tensor<3x1x4x32xf32>, tensor<3x1x4x32xf32>, tensor<3xi32>)
        -> (!cache, tensor<3x1xi32>)
    %z = llm.paged_attention %y, %cb, %t, %l {layer = 1 : i32}
        : (tensor<3x1x4x32xf32>, !cache, tensor<3x16xi32>, tensor<3xi32>)
        -> tensor<3x1x4x32xf32>
    scf.yield %z, %cb : tensor<3x1x4x32xf32>, !cache
  }
  %tf, %lens = llm.block_table %cache, %ids
      : (!cache, tensor<3xi32>) -> (tensor<3x16xi32>, tensor<3xi32>)
  func.return %x, %o2, %lens : tensor<3x1x4x32xf32>, tensor<1x12x4x32xf32>, tensor<3xi32>
}
