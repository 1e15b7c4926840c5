// A static block table that leaves the llm ops cannot be resized.
// RUN: not xdsl-opt %s -p 'llm-select-block-size{lengths=4000 costs="%S/inputs/block_costs.json"}' 2>&1 | filecheck %s

// CHECK: llm-select-block-size: the block table tensor<1x256xi32> of llm.block_table flows into func.return, whose type would change with the block size; give the table a dynamic width
func.func @escape(%c : !llm.paged_kv_cache<f16, 1, 2, 8, 16, 4096>, %ids : tensor<1xi32>) -> tensor<1x256xi32> {
  %t, %l = llm.block_table %c, %ids : (!llm.paged_kv_cache<f16, 1, 2, 8, 16, 4096>, tensor<1xi32>) -> (tensor<1x256xi32>, tensor<1xi32>)
  func.return %t : tensor<1x256xi32>
}
