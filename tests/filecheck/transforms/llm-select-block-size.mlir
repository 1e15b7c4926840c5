// The costs come from a synthetic table (inputs/block_costs.json): per
// sequence, larger blocks are cheaper per token, smaller ones waste less.
// RUN: xdsl-opt %s -p 'llm-select-block-size{lengths=4000,4000 costs="%S/inputs/block_costs.json"}' | filecheck %s --check-prefix=LONG
// RUN: xdsl-opt %s -p 'llm-select-block-size{lengths=20,30,40,50 costs="%S/inputs/block_costs.json"}' | filecheck %s --check-prefix=SHORT
// RUN: xdsl-opt %s -p 'llm-select-block-size{mean=30 max=4096 costs="%S/inputs/block_costs.json"}' | filecheck %s --check-prefix=SHORT
// Idempotent:
// RUN: xdsl-opt %s -p 'llm-select-block-size{lengths=4000,4000 costs="%S/inputs/block_costs.json"}' > %t.mlir && xdsl-opt %t.mlir -p 'llm-select-block-size{lengths=4000,4000 costs="%S/inputs/block_costs.json"}' | diff %t.mlir -
// RUN: not xdsl-opt %s -p 'llm-select-block-size' 2>&1 | filecheck %s --check-prefix=NOWORK
// RUN: not xdsl-opt %s -p 'llm-select-block-size{lengths=5 costs="%S/nope.json"}' 2>&1 | filecheck %s --check-prefix=NOCOSTS

!cache = !llm.paged_kv_cache<f16, 1, 2, 8, 16, 4096>

// Long documents: the largest block; the type changes everywhere (the
// signature, the ops, the seed-style block_size attribute) and the static
// table width keeps its capacity (256 x 16 = 64 x 64 tokens).
// LONG-LABEL: func.func @main(%c0: !llm.paged_kv_cache<f16, 1, 2, 8, 64, 4096>
// LONG: %kv = llm.create_kv_cache {llm.block_size_model = {block_size = 64 : i64, candidates = [8 : i64, 16 : i64, 32 : i64, 64 : i64], step_us = [{{.*}}]}, num_blocks = 64 : i64} : !llm.paged_kv_cache<f16, 1, 2, 8, 64, 4096>
// LONG: llm.append_kv %c0, %x, %x, %ids {block_size = 64 : i32}
// LONG: llm.block_table %c1, %ids : (!llm.paged_kv_cache<f16, 1, 2, 8, 64, 4096>, tensor<2xi32>) -> (tensor<2x64xi32>, tensor<2xi32>)
// LONG: llm.paged_attention %q, %c1, %t, %l : (tensor<2x1x4x8xf32>, !llm.paged_kv_cache<f16, 1, 2, 8, 64, 4096>, tensor<2x64xi32>, tensor<2xi32>)

// Short chat turns: the last blocks' waste outweighs the per-token gain.
// SHORT-LABEL: func.func @main(%c0: !llm.paged_kv_cache<f16, 1, 2, 8, 8, 4096>
// SHORT: tensor<2x512xi32>

// NOWORK: llm-select-block-size: give the expected lengths (lengths=120,300,2048) or a mean and a max
// NOCOSTS: llm-select-block-size: cannot read the cost table
func.func @main(%c0 : !cache, %x : tensor<2x1x2x8xf32>, %q : tensor<2x1x4x8xf32>, %ids : tensor<2xi32>) -> (!cache, tensor<2x1x4x8xf32>) {
  %kv = llm.create_kv_cache {num_blocks = 64 : i64} : !cache
  %c1, %i = llm.append_kv %c0, %x, %x, %ids {block_size = 16 : i32} : (!cache, tensor<2x1x2x8xf32>, tensor<2x1x2x8xf32>, tensor<2xi32>) -> (!cache, tensor<2x1xi32>)
  %t, %l = llm.block_table %c1, %ids : (!cache, tensor<2xi32>) -> (tensor<2x256xi32>, tensor<2xi32>)
  %o = llm.paged_attention %q, %c1, %t, %l : (tensor<2x1x4x8xf32>, !cache, tensor<2x256xi32>, tensor<2xi32>) -> tensor<2x1x4x8xf32>
  func.return %c1, %o : !cache, tensor<2x1x4x8xf32>
}
