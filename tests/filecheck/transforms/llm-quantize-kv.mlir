// RUN: xdsl-opt %s -p 'llm-quantize-kv{type=i8}' | filecheck %s --check-prefix=I8
// RUN: xdsl-opt %s -p 'llm-quantize-kv{type=i4}' | filecheck %s --check-prefix=I4
// Idempotent, and the quantized program runs within its error bound:
// RUN: xdsl-opt %s -p 'llm-quantize-kv{type=i4}' > %t.mlir && xdsl-opt %t.mlir -p 'llm-quantize-kv{type=i4}' | diff %t.mlir -
// RUN: llmir-run %t.mlir --random-args 1 --check | filecheck %s --check-prefix=EXEC
// Lowered, the quantized program runs on the same runtime calls:
// RUN: llmir-run %t.mlir -p convert-llm-to-func --random-args 1 --check | filecheck %s --check-prefix=EXEC
// RUN: not xdsl-opt %s -p 'llm-quantize-kv{type=i3}' 2>&1 | filecheck %s --check-prefix=BADTYPE
// RUN: not xdsl-opt %S/inputs/quantize-bf16.mlir -p 'llm-quantize-kv{type=i8}' 2>&1 | filecheck %s --check-prefix=BF16

!cache = !llm.paged_kv_cache<f16, 1, 2, 32, 16, 256>

// The cache type changes everywhere (signature, ops, loop values); tensors
// keep their element types (f32 and f16 both feed a quantized cache).
// I8-LABEL: func.func @main(%x: tensor<2x5x2x32xf32>, %x16: tensor<2x1x2x32xf16>, %q: tensor<2x1x4x32xf32>)
// I8: llm.create_kv_cache {num_blocks = 8 : i64} : !llm.paged_kv_cache<i8, 1, 2, 32, 16, 256>
// I8: llm.append_kv {{.*}} : (!llm.paged_kv_cache<i8, 1, 2, 32, 16, 256>, tensor<2x5x2x32xf32>
// I8: llm.append_kv {{.*}} : (!llm.paged_kv_cache<i8, 1, 2, 32, 16, 256>, tensor<2x1x2x32xf16>
// I8: llm.lookup_kv {{.*}} -> (tensor<2x16x2x32xf16>, tensor<2x16x2x32xf16>)
// I4: !llm.paged_kv_cache<i4, 1, 2, 32, 16, 256>
// I4-NOT: !llm.paged_kv_cache<f16
// EXEC: check: PASS (worst relative RMS error {{.*}}, tolerance 0.16)
// BADTYPE: llm-quantize-kv: type must be one of i8, i4, got 'i3'
// BF16: llm-quantize-kv: llm.append_kv passes tensor<1x1x2x16xbf16> to !llm.paged_kv_cache<bf16, 1, 2, 16, 16, 64>; a quantized cache takes f32 or f16 tensors
func.func @main(%x : tensor<2x5x2x32xf32>, %x16 : tensor<2x1x2x32xf16>, %q : tensor<2x1x4x32xf32>)
    -> (tensor<2x1x4x32xf32>, tensor<2x16x2x32xf16>) {
  %kv = llm.create_kv_cache {num_blocks = 8 : i64} : !cache
  %ids = arith.constant dense<[0, 1]> : tensor<2xi32>
  %kv1, %b = llm.append_kv %kv, %x, %x, %ids
      : (!cache, tensor<2x5x2x32xf32>, tensor<2x5x2x32xf32>, tensor<2xi32>) -> (!cache, tensor<2x5xi32>)
  %kv2, %b2 = llm.append_kv %kv1, %x16, %x16, %ids
      : (!cache, tensor<2x1x2x32xf16>, tensor<2x1x2x32xf16>, tensor<2xi32>) -> (!cache, tensor<2x1xi32>)
  %t, %l = llm.block_table %kv2, %ids : (!cache, tensor<2xi32>) -> (tensor<2x1xi32>, tensor<2xi32>)
  %o = llm.paged_attention %q, %kv2, %t, %l : (tensor<2x1x4x32xf32>, !cache, tensor<2x1xi32>, tensor<2xi32>) -> tensor<2x1x4x32xf32>
  %k, %v = llm.lookup_kv %kv2, %t, %l : (!cache, tensor<2x1xi32>, tensor<2xi32>) -> (tensor<2x16x2x32xf16>, tensor<2x16x2x32xf16>)
  func.return %o, %k : tensor<2x1x4x32xf32>, tensor<2x16x2x32xf16>
}
