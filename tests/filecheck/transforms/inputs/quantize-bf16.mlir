// A cache fed bf16 tensors cannot be quantized (llm-quantize-kv.mlir).
!cache = !llm.paged_kv_cache<bf16, 1, 2, 16, 16, 64>
func.func @main(%x : tensor<1x1x2x16xbf16>) {
  %kv = llm.create_kv_cache {num_blocks = 4 : i64} : !llm.paged_kv_cache<bf16, 1, 2, 16, 16, 64>
  %ids = arith.constant dense<0> : tensor<1xi32>
  %kv1, %b = llm.append_kv %kv, %x, %x, %ids : (!cache, tensor<1x1x2x16xbf16>, tensor<1x1x2x16xbf16>, tensor<1xi32>) -> (!cache, tensor<1x1xi32>)
  func.return
}
