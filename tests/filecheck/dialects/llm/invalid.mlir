// RUN: xdsl-opt %s --verify-diagnostics --split-input-file | filecheck %s
// One case per verifier message of the llm dialect, in source order.

func.func @f(%kv : !llm.paged_kv_cache<i16, 2, 4, 8, 16, 64>) {
  func.return
}

// CHECK: paged_kv_cache element type must be f32, f16, bf16, i8 or i4, got i16

// -----

func.func @f(%kv : !llm.paged_kv_cache<i4, 2, 4, 24, 16, 64>) {
  func.return
}

// CHECK: paged_kv_cache of i4: head_dim 24 must be a multiple of 32 (value groups of 16 in each half of a row)

// -----

func.func @f(%kv : !llm.paged_kv_cache<i8, 2, 4, 8, 12, 64>) {
  func.return
}

// CHECK: paged_kv_cache of i8: block_size 12 must be a power of two

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 0, 4, 8, 16, 64>) {
  func.return
}

// CHECK: paged_kv_cache num_layers must be in [1, 2147483647], got 0

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 0, 8, 16, 64>) {
  func.return
}

// CHECK: paged_kv_cache num_heads must be in [1, 2147483647], got 0

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, -8, 16, 64>) {
  func.return
}

// CHECK: paged_kv_cache head_dim must be in [1, 2147483647], got -8

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 0, 64>) {
  func.return
}

// CHECK: paged_kv_cache block_size must be in [1, 2147483647], got 0

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 0>) {
  func.return
}

// CHECK: paged_kv_cache max_seq_len must be in [1, 2147483647], got 0

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 12, 48>) {
  func.return
}

// CHECK: paged_kv_cache block_size must be a power of two, got 12

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 40>) {
  func.return
}

// CHECK: paged_kv_cache max_seq_len 40 must be a multiple of block_size 16

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 1180591620717411303424, 4, 8, 16, 64>) {
  func.return
}

// Every dimension fits in i32 (layers = 2^70 here).
// CHECK: paged_kv_cache num_layers must be in [1, 2147483647], got 1180591620717411303424

// -----

func.func @f(%kv : !llm.paged_kv_cache<f32, 2147483647, 2147483647, 8, 16, 64>) {
  func.return
}

// One block of all layers must fit in 2^63 bytes, so passes can count bytes in i64.
// CHECK: paged_kv_cache: one block of 2147483647 layers x 2147483647 heads x 16 tokens x 8 would exceed 2^63 bytes

// -----

%kv = llm.create_kv_cache {num_blocks = 0 : i64} : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

// CHECK: llm.create_kv_cache: num_blocks must be positive, got 0

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x3x4x8xf16>, %v : tensor<2x3x4x8xf16>, %s : tensor<2xi32>) {
  %kv1, %idx = llm.append_kv %kv, %k, %v, %s  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x4x8xf16>, tensor<2x3x4x8xf16>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 1, 4, 8, 16, 64>, tensor<2x3xi32>)
  func.return
}

// CHECK: llm.append_kv: result cache type !llm.paged_kv_cache<f16, 1, 4, 8, 16, 64> does not match operand cache type !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x3x32xf16>, %v : tensor<2x3x32xf16>, %s : tensor<2xi32>) {
  %kv1, %idx = llm.append_kv %kv, %k, %v, %s  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x32xf16>, tensor<2x3x32xf16>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3xi32>)
  func.return
}

// CHECK: llm.append_kv: keys must be a rank-4 tensor, got tensor<2x3x32xf16>

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x3x4x8xf16>, %v : tensor<2x3x4x8xf32>, %s : tensor<2xi32>) {
  %kv1, %idx = llm.append_kv %kv, %k, %v, %s  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x4x8xf16>, tensor<2x3x4x8xf32>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3xi32>)
  func.return
}

// CHECK: llm.append_kv: values type tensor<2x3x4x8xf32> does not match keys type tensor<2x3x4x8xf16>

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x3x4x8xbf16>, %v : tensor<2x3x4x8xbf16>, %s : tensor<2xi32>) {
  %kv1, %idx = llm.append_kv %kv, %k, %v, %s  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x4x8xbf16>, tensor<2x3x4x8xbf16>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3xi32>)
  func.return
}

// CHECK: llm.append_kv: keys element type must be f32 or the cache element type f16, got bf16

// -----

func.func @f(%kv : !llm.paged_kv_cache<i8, 2, 4, 8, 16, 64>, %k : tensor<2x3x4x8xbf16>, %v : tensor<2x3x4x8xbf16>, %s : tensor<2xi32>) {
  %kv1, %idx = llm.append_kv %kv, %k, %v, %s  : (!llm.paged_kv_cache<i8, 2, 4, 8, 16, 64>, tensor<2x3x4x8xbf16>, tensor<2x3x4x8xbf16>, tensor<2xi32>) -> (!llm.paged_kv_cache<i8, 2, 4, 8, 16, 64>, tensor<2x3xi32>)
  func.return
}

// CHECK: llm.append_kv: keys element type must be f32 or f16 (the cache is quantized to i8), got bf16

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x3x?x8xf16>, %v : tensor<2x3x?x8xf16>, %s : tensor<2xi32>) {
  %kv1, %idx = llm.append_kv %kv, %k, %v, %s  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x?x8xf16>, tensor<2x3x?x8xf16>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3xi32>)
  func.return
}

// CHECK: llm.append_kv: keys num_heads must be static

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x3x4x?xf16>, %v : tensor<2x3x4x?xf16>, %s : tensor<2xi32>) {
  %kv1, %idx = llm.append_kv %kv, %k, %v, %s  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x4x?xf16>, tensor<2x3x4x?xf16>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3xi32>)
  func.return
}

// CHECK: llm.append_kv: keys head_dim must be static

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x3x2x8xf16>, %v : tensor<2x3x2x8xf16>, %s : tensor<2xi32>) {
  %kv1, %idx = llm.append_kv %kv, %k, %v, %s  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x2x8xf16>, tensor<2x3x2x8xf16>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3xi32>)
  func.return
}

// CHECK: llm.append_kv: keys num_heads 2 does not match cache num_heads 4

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x3x4x16xf16>, %v : tensor<2x3x4x16xf16>, %s : tensor<2xi32>) {
  %kv1, %idx = llm.append_kv %kv, %k, %v, %s  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x4x16xf16>, tensor<2x3x4x16xf16>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3xi32>)
  func.return
}

// CHECK: llm.append_kv: keys head_dim 16 does not match cache head_dim 8

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x65x4x8xf16>, %v : tensor<2x65x4x8xf16>, %s : tensor<2xi32>) {
  %kv1, %idx = llm.append_kv %kv, %k, %v, %s  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x65x4x8xf16>, tensor<2x65x4x8xf16>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x65xi32>)
  func.return
}

// CHECK: llm.append_kv: tokens per sequence 65 exceeds max_seq_len 64

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x3x4x8xf16>, %v : tensor<2x3x4x8xf16>, %s : tensor<2x1xi32>) {
  %kv1, %idx = llm.append_kv %kv, %k, %v, %s  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x4x8xf16>, tensor<2x3x4x8xf16>, tensor<2x1xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3xi32>)
  func.return
}

// CHECK: llm.append_kv: seq_ids must be a rank-1 tensor, got tensor<2x1xi32>

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x3x4x8xf16>, %v : tensor<2x3x4x8xf16>, %s : tensor<2xi64>) {
  %kv1, %idx = llm.append_kv %kv, %k, %v, %s  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x4x8xf16>, tensor<2x3x4x8xf16>, tensor<2xi64>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3xi32>)
  func.return
}

// CHECK: llm.append_kv: seq_ids element type must be i32, got i64

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x3x4x8xf16>, %v : tensor<2x3x4x8xf16>, %s : tensor<3xi32>) {
  %kv1, %idx = llm.append_kv %kv, %k, %v, %s  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x4x8xf16>, tensor<2x3x4x8xf16>, tensor<3xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3xi32>)
  func.return
}

// CHECK: llm.append_kv: seq_ids batch 3 does not match keys batch 2

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x3x4x8xf16>, %v : tensor<2x3x4x8xf16>, %s : tensor<2xi32>) {
  %kv1, %idx = llm.append_kv %kv, %k, %v, %s  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x4x8xf16>, tensor<2x3x4x8xf16>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<1x3xi32>)
  func.return
}

// CHECK: llm.append_kv: block_indices batch 1 does not match keys batch 2

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x3x4x8xf16>, %v : tensor<2x3x4x8xf16>, %s : tensor<2xi32>) {
  %kv1, %idx = llm.append_kv %kv, %k, %v, %s  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x4x8xf16>, tensor<2x3x4x8xf16>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x1xi32>)
  func.return
}

// CHECK: llm.append_kv: block_indices tokens 1 does not match keys tokens 3

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x3x4x8xf16>, %v : tensor<2x3x4x8xf16>, %s : tensor<2xi32>) {
  %kv1, %idx = llm.append_kv %kv, %k, %v, %s {layer = 2 : i32} : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x4x8xf16>, tensor<2x3x4x8xf16>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3xi32>)
  func.return
}

// CHECK: llm.append_kv: layer 2 out of range for a cache of 2 layers

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x3x4x8xf16>, %v : tensor<2x3x4x8xf16>, %s : tensor<2xi32>) {
  %kv1, %idx = llm.append_kv %kv, %k, %v, %s {layer = -1 : i32} : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x4x8xf16>, tensor<2x3x4x8xf16>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3xi32>)
  func.return
}

// CHECK: llm.append_kv: layer -1 out of range for a cache of 2 layers

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x3x4x8xf16>, %v : tensor<2x3x4x8xf16>, %s : tensor<2xi32>) {
  %kv1, %idx = llm.append_kv %kv, %k, %v, %s {block_size = 32 : i32} : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x4x8xf16>, tensor<2x3x4x8xf16>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3xi32>)
  func.return
}

// CHECK: llm.append_kv: block_size 32 does not match cache block_size 16

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x3x4x8xf16>, %v : tensor<2x3x4x8xf16>, %s : tensor<2xi32>) {
  %kv1, %idx = llm.append_kv %kv, %k, %v, %s {max_seq_len = 128 : i32} : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x4x8xf16>, tensor<2x3x4x8xf16>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3xi32>)
  func.return
}

// CHECK: llm.append_kv: max_seq_len 128 does not match cache max_seq_len 64

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %s : tensor<2xi32>) {
  %t, %l = llm.block_table %kv, %s : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>) -> (tensor<3x4xi32>, tensor<2xi32>)
  func.return
}

// CHECK: llm.block_table: block_table batch 3 does not match seq_ids batch 2

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %s : tensor<2xi32>) {
  %t, %l = llm.block_table %kv, %s : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>) -> (tensor<2x0xi32>, tensor<2xi32>)
  func.return
}

// CHECK: llm.block_table: block_table width must be positive

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %s : tensor<2xi32>) {
  %t, %l = llm.block_table %kv, %s : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>) -> (tensor<2x5xi32>, tensor<2xi32>)
  func.return
}

// CHECK: llm.block_table: block_table width 5 exceeds max_seq_len / block_size 4

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %s : tensor<2xi32>) {
  %t, %l = llm.block_table %kv, %s : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>) -> (tensor<2x4xi64>, tensor<2xi32>)
  func.return
}

// CHECK: llm.block_table: block_table element type must be i32, got i64

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %s : tensor<2xi32>) {
  %t, %l = llm.block_table %kv, %s : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>) -> (tensor<2x4xi32>, tensor<1xi32>)
  func.return
}

// CHECK: llm.block_table: seq_lens batch 1 does not match seq_ids batch 2

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x8xi32>, %l : tensor<2xi32>) {
  %k, %v = llm.lookup_kv %kv, %t, %l  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x8xi32>, tensor<2xi32>) -> (tensor<2x64x4x8xf16>, tensor<2x64x4x8xf16>)
  func.return
}

// CHECK: llm.lookup_kv: block_table width 8 exceeds max_seq_len / block_size 4

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<8xi32>, %l : tensor<2xi32>) {
  %k, %v = llm.lookup_kv %kv, %t, %l  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<8xi32>, tensor<2xi32>) -> (tensor<2x64x4x8xf16>, tensor<2x64x4x8xf16>)
  func.return
}

// CHECK: llm.lookup_kv: block_table must be a rank-2 tensor, got tensor<8xi32>

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<3xi32>) {
  %k, %v = llm.lookup_kv %kv, %t, %l  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<3xi32>) -> (tensor<2x64x4x8xf16>, tensor<2x64x4x8xf16>)
  func.return
}

// CHECK: llm.lookup_kv: seq_lens batch 3 does not match block_table batch 2

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %k, %v = llm.lookup_kv %kv, %t, %l  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> (tensor<2x64x4x8xf16>, tensor<2x64x4x8xf32>)
  func.return
}

// CHECK: llm.lookup_kv: values type tensor<2x64x4x8xf32> does not match keys type tensor<2x64x4x8xf16>

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %k, %v = llm.lookup_kv %kv, %t, %l  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> (tensor<2x64x4x8xf64>, tensor<2x64x4x8xf64>)
  func.return
}

// CHECK: llm.lookup_kv: keys element type must be f32 or the cache element type f16, got f64

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %k, %v = llm.lookup_kv %kv, %t, %l  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> (tensor<1x64x4x8xf16>, tensor<1x64x4x8xf16>)
  func.return
}

// CHECK: llm.lookup_kv: keys batch 1 does not match block_table batch 2

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %k, %v = llm.lookup_kv %kv, %t, %l  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> (tensor<2x80x4x8xf16>, tensor<2x80x4x8xf16>)
  func.return
}

// CHECK: llm.lookup_kv: keys length 80 exceeds max_seq_len 64

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %k, %v = llm.lookup_kv %kv, %t, %l  : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> (tensor<2x64x8x8xf16>, tensor<2x64x8x8xf16>)
  func.return
}

// CHECK: llm.lookup_kv: keys num_heads 8 does not match cache num_heads 4

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %k, %v = llm.lookup_kv %kv, %t, %l {layer = 5 : i32} : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> (tensor<2x64x4x8xf16>, tensor<2x64x4x8xf16>)
  func.return
}

// CHECK: llm.lookup_kv: layer 5 out of range for a cache of 2 layers

// -----

func.func @f(%q : tensor<2x8x8xf16>, %kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %o = llm.paged_attention %q, %kv, %t, %l  : (tensor<2x8x8xf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x8x8xf16>
  func.return
}

// CHECK: llm.paged_attention: query must be a rank-4 tensor, got tensor<2x8x8xf16>

// -----

func.func @f(%q : tensor<2x1x8x8xbf16>, %kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %o = llm.paged_attention %q, %kv, %t, %l  : (tensor<2x1x8x8xbf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x8x8xbf16>
  func.return
}

// CHECK: llm.paged_attention: query element type must be f32 or the cache element type f16, got bf16

// -----

func.func @f(%q : tensor<2x1x?x8xf16>, %kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %o = llm.paged_attention %q, %kv, %t, %l  : (tensor<2x1x?x8xf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x?x8xf16>
  func.return
}

// CHECK: llm.paged_attention: query num_heads must be static

// -----

func.func @f(%q : tensor<2x1x8x?xf16>, %kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %o = llm.paged_attention %q, %kv, %t, %l  : (tensor<2x1x8x?xf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x8x?xf16>
  func.return
}

// CHECK: llm.paged_attention: query head_dim must be static

// -----

func.func @f(%q : tensor<2x1x8x4xf16>, %kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %o = llm.paged_attention %q, %kv, %t, %l  : (tensor<2x1x8x4xf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x8x4xf16>
  func.return
}

// CHECK: llm.paged_attention: query head_dim 4 does not match cache head_dim 8

// -----

func.func @f(%q : tensor<2x1x6x8xf16>, %kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %o = llm.paged_attention %q, %kv, %t, %l  : (tensor<2x1x6x8xf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x6x8xf16>
  func.return
}

// CHECK: llm.paged_attention: query num_heads 6 is not a multiple of cache num_heads 4

// -----

func.func @f(%q : tensor<2x65x8x8xf16>, %kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %o = llm.paged_attention %q, %kv, %t, %l  : (tensor<2x65x8x8xf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x65x8x8xf16>
  func.return
}

// CHECK: llm.paged_attention: query length 65 exceeds max_seq_len 64

// -----

func.func @f(%q : tensor<2x1x8x8xf16>, %kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi64>) {
  %o = llm.paged_attention %q, %kv, %t, %l  : (tensor<2x1x8x8xf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi64>) -> tensor<2x1x8x8xf16>
  func.return
}

// CHECK: llm.paged_attention: seq_lens element type must be i32, got i64

// -----

func.func @f(%q : tensor<2x1x8x8xf16>, %kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<3x4xi32>, %l : tensor<3xi32>) {
  %o = llm.paged_attention %q, %kv, %t, %l  : (tensor<2x1x8x8xf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<3x4xi32>, tensor<3xi32>) -> tensor<2x1x8x8xf16>
  func.return
}

// CHECK: llm.paged_attention: block_table batch 3 does not match query batch 2

// -----

func.func @f(%q : tensor<2x1x8x8xf16>, %kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %o = llm.paged_attention %q, %kv, %t, %l  : (tensor<2x1x8x8xf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x8x8xf32>
  func.return
}

// CHECK: llm.paged_attention: output type tensor<2x1x8x8xf32> does not match query type tensor<2x1x8x8xf16>

// -----

func.func @f(%q : tensor<2x1x8x8xf16>, %kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %o = llm.paged_attention %q, %kv, %t, %l {num_heads = 4 : i32} : (tensor<2x1x8x8xf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x8x8xf16>
  func.return
}

// CHECK: llm.paged_attention: num_heads 4 does not match query num_heads 8

// -----

func.func @f(%q : tensor<2x1x8x8xf16>, %kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %o = llm.paged_attention %q, %kv, %t, %l {head_dim = 16 : i32} : (tensor<2x1x8x8xf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x8x8xf16>
  func.return
}

// CHECK: llm.paged_attention: head_dim 16 does not match query head_dim 8

// -----

func.func @f(%q : tensor<2x1x8x8xf16>, %kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %o = llm.paged_attention %q, %kv, %t, %l {scale = 0.0 : f32} : (tensor<2x1x8x8xf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x8x8xf16>
  func.return
}

// CHECK: llm.paged_attention: scale must be a finite positive number, got 0.0

// -----

func.func @f(%q : tensor<2x1x8x8xf16>, %kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %o = llm.paged_attention %q, %kv, %t, %l {scale = 0x7F800000 : f32} : (tensor<2x1x8x8xf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x8x8xf16>
  func.return
}

// CHECK: llm.paged_attention: scale must be a finite positive number, got inf

// -----

func.func @f(%q : tensor<2x1x8x8xf16>, %kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %o = llm.paged_attention %q, %kv, %t, %l {scale = 1.0e+38 : f32} : (tensor<2x1x8x8xf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x8x8xf16>
  func.return
}

// The runtime's rule: a logit of up to 1e4 times the scale must stay finite.
// CHECK: llm.paged_attention: scale 9.99999{{[0-9]*}}e+37 is outside the float32 range usable for logits up to 10000

// -----

func.func @f(%q : tensor<2x1x8x8xf16>, %kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %o = llm.paged_attention %q, %kv, %t, %l {sliding_window = 0 : i32} : (tensor<2x1x8x8xf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x8x8xf16>
  func.return
}

// CHECK: llm.paged_attention: sliding_window must be an integer in [1, 2147483647], got 0

// -----

func.func @f(%q : tensor<2x1x8x8xf16>, %kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %o = llm.paged_attention %q, %kv, %t, %l {logits_soft_cap = -3.0 : f32} : (tensor<2x1x8x8xf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x8x8xf16>
  func.return
}

// CHECK: llm.paged_attention: logits_soft_cap must be a finite positive number, got -3.0

// -----

func.func @f(%q : tensor<2x1x8x8xf16>, %kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %o = llm.paged_attention %q, %kv, %t, %l {logits_soft_cap = 0x7F800000 : f32} : (tensor<2x1x8x8xf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x8x8xf16>
  func.return
}

// CHECK: llm.paged_attention: logits_soft_cap must be a finite positive number, got inf

// -----

func.func @f(%q : tensor<2x1x8x8xf16>, %kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %o = llm.paged_attention %q, %kv, %t, %l {layer = 2 : i32} : (tensor<2x1x8x8xf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x8x8xf16>
  func.return
}

// CHECK: llm.paged_attention: layer 2 out of range for a cache of 2 layers

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %s : tensor<2xi32>) {
  %kv1 = llm.free_sequence %kv, %s : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>) -> !llm.paged_kv_cache<f32, 2, 4, 8, 16, 64>
  func.return
}

// CHECK: llm.free_sequence: result cache type !llm.paged_kv_cache<f32, 2, 4, 8, 16, 64> does not match operand cache type !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %s : tensor<2xi64>) {
  %kv1 = llm.free_sequence %kv, %s : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi64>) -> !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
  func.return
}

// CHECK: llm.free_sequence: seq_ids element type must be i32, got i64

// -----

%kv = llm.create_kv_cache {num_blocks = 8 : i64, eviction = "mru"} : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

// CHECK: llm.create_kv_cache: unknown eviction policy "mru", expected one of lru, priority

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x3x4x8xf16>, %s : tensor<2xi32>, %t : tensor<2x4xi32>) {
  %kv1, %i = llm.append_kv %kv, %k, %k, %s, %t : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x4x8xf16>, tensor<2x3x4x8xf16>, tensor<2xi32>, tensor<2x4xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3xi32>)
  func.return
}

// CHECK: llm.append_kv: token_ids tokens 4 does not match keys tokens 3

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x3x4x8xf16>, %s : tensor<2xi32>, %t : tensor<2x3xi64>) {
  %kv1, %i = llm.append_kv %kv, %k, %k, %s, %t : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x4x8xf16>, tensor<2x3x4x8xf16>, tensor<2xi32>, tensor<2x3xi64>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3xi32>)
  func.return
}

// CHECK: llm.append_kv: token_ids element type must be i32, got i64

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %p : tensor<2xi32>, %c : tensor<3xi32>) {
  %kv1 = llm.fork_sequence %kv, %p, %c : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>, tensor<3xi32>) -> !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
  func.return
}

// CHECK: llm.fork_sequence: children count 3 does not match parents count 2

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %p : tensor<2x1xi32>, %c : tensor<2xi32>) {
  %kv1 = llm.fork_sequence %kv, %p, %c : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x1xi32>, tensor<2xi32>) -> !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
  func.return
}

// CHECK: llm.fork_sequence: parents must be a rank-1 tensor, got tensor<2x1xi32>

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %s : tensor<2xi32>, %t : tensor<3x8xi32>) {
  %kv1, %n = llm.match_prefix %kv, %s, %t : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>, tensor<3x8xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>)
  func.return
}

// CHECK: llm.match_prefix: token_ids batch 3 does not match seq_ids batch 2

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %s : tensor<2xi32>, %t : tensor<2x65xi32>) {
  %kv1, %n = llm.match_prefix %kv, %s, %t : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>, tensor<2x65xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>)
  func.return
}

// CHECK: llm.match_prefix: prompt length 65 exceeds max_seq_len 64

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %s : tensor<2xi32>, %t : tensor<2x8xi32>) {
  %kv1, %n = llm.match_prefix %kv, %s, %t : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>, tensor<2x8xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<3xi32>)
  func.return
}

// CHECK: llm.match_prefix: cached_lens batch 3 does not match seq_ids batch 2

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %s : tensor<2xi32>, %t : tensor<2x8xi32>) {
  %kv1, %n = llm.match_prefix %kv, %s, %t : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>, tensor<2x8xi32>) -> (!llm.paged_kv_cache<f32, 2, 4, 8, 16, 64>, tensor<2xi32>)
  func.return
}

// CHECK: llm.match_prefix: result cache type !llm.paged_kv_cache<f32, 2, 4, 8, 16, 64> does not match operand cache type !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %s : tensor<2xi32>) {
  %kv1, %sl, %t, %l = llm.reserve_slots %kv, %s {num_tokens = 0 : i32} : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x2x0xi32>, tensor<2x4xi32>, tensor<2xi32>)
  func.return
}

// CHECK: llm.reserve_slots: num_tokens must be positive, got 0

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %s : tensor<2xi32>) {
  %kv1, %sl, %t, %l = llm.reserve_slots %kv, %s {num_tokens = 65 : i32} : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x2x65xi32>, tensor<2x4xi32>, tensor<2xi32>)
  func.return
}

// CHECK: llm.reserve_slots: num_tokens 65 exceeds max_seq_len 64

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %s : tensor<2xi32>) {
  %kv1, %sl, %t, %l = llm.reserve_slots %kv, %s {num_tokens = 1 : i32} : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<3x2x1xi32>, tensor<2x4xi32>, tensor<2xi32>)
  func.return
}

// CHECK: llm.reserve_slots: slots layers 3 does not match cache num_layers 2

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %s : tensor<2xi32>) {
  %kv1, %sl, %t, %l = llm.reserve_slots %kv, %s {num_tokens = 1 : i32} : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x3x1xi32>, tensor<2x4xi32>, tensor<2xi32>)
  func.return
}

// CHECK: llm.reserve_slots: slots batch 3 does not match seq_ids batch 2

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %s : tensor<2xi32>) {
  %kv1, %sl, %t, %l = llm.reserve_slots %kv, %s {num_tokens = 1 : i32} : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x2x2xi32>, tensor<2x4xi32>, tensor<2xi32>)
  func.return
}

// CHECK: llm.reserve_slots: slots tokens 2 does not match num_tokens 1

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %s : tensor<2xi32>) {
  %kv1, %sl, %t, %l = llm.reserve_slots %kv, %s {num_tokens = 1 : i32} : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>) -> (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x2x1xi32>, tensor<3x4xi32>, tensor<3xi32>)
  func.return
}

// CHECK: llm.reserve_slots: block_table batch 3 does not match seq_ids batch 2

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x1x4x8xf16>, %sl : tensor<2x2x2xi32>) {
  %kv1 = llm.write_kv %kv, %k, %k, %sl : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x1x4x8xf16>, tensor<2x1x4x8xf16>, tensor<2x2x2xi32>) -> !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
  func.return
}

// CHECK: llm.write_kv: slots tokens 2 does not match keys tokens 1

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x1x4x8xf16>, %sl : tensor<2x2x1xi32>) {
  %kv1 = llm.write_kv %kv, %k, %k, %sl {layer = 2 : i32} : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x1x4x8xf16>, tensor<2x1x4x8xf16>, tensor<2x2x1xi32>) -> !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
  func.return
}

// CHECK: llm.write_kv: layer 2 out of range for a cache of 2 layers

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %k : tensor<2x1x4x8xf16>, %sl : tensor<2x2x1xi64>) {
  %kv1 = llm.write_kv %kv, %k, %k, %sl : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x1x4x8xf16>, tensor<2x1x4x8xf16>, tensor<2x2x1xi64>) -> !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
  func.return
}

// CHECK: llm.write_kv: slots element type must be i32, got i64

// -----

%kv = llm.create_kv_cache {num_blocks = 8 : i64, swap_blocks = -1 : i64} : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

// CHECK: llm.create_kv_cache: swap_blocks must be in [0, 2147483647], got -1

// -----

%kv = llm.create_kv_cache {num_blocks = 8 : i64, swap_blocks = 4611686018427387904 : i64} : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

// CHECK: llm.create_kv_cache: swap_blocks must be in [0, 2147483647], got 4611686018427387904

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %s : tensor<2x2xi32>) {
  %kv1 = llm.swap_out %kv, %s : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x2xi32>) -> !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>
  func.return
}

// CHECK: llm.swap_out: seq_ids must be a rank-1 tensor, got tensor<2x2xi32>

// -----

func.func @f(%kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %s : tensor<2xi32>) {
  %kv1 = llm.swap_in %kv, %s : (!llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2xi32>) -> !llm.paged_kv_cache<f32, 2, 4, 8, 16, 64>
  func.return
}

// CHECK: llm.swap_in: result cache type !llm.paged_kv_cache<f32, 2, 4, 8, 16, 64> does not match operand cache type !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

// -----

%kv = llm.create_kv_cache {num_blocks = 8 : i64, window_tokens = 0 : i64} : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

// CHECK: llm.create_kv_cache: window_tokens must be in [1, max_seq_len 64], got 0

// -----

%kv = llm.create_kv_cache {num_blocks = 8 : i64, window_tokens = 65 : i64} : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

// CHECK: llm.create_kv_cache: window_tokens must be in [1, max_seq_len 64], got 65

// -----

%kv = llm.create_kv_cache {num_blocks = 8 : i64, window_tokens = 32 : i64, sink_tokens = -4 : i64} : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

// CHECK: llm.create_kv_cache: sink_tokens must be in [1, max_seq_len 64], got -4

// -----

%kv = llm.create_kv_cache {num_blocks = 8 : i64, sink_tokens = 4 : i64} : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

// CHECK: llm.create_kv_cache: sink_tokens needs window_tokens (without a window nothing is pruned)

// -----

func.func @f(%q : tensor<2x1x8x8xf16>, %kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %o = llm.paged_attention %q, %kv, %t, %l {sink_tokens = 4 : i32} : (tensor<2x1x8x8xf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x8x8xf16>
  func.return
}

// CHECK: llm.paged_attention: sink_tokens=4 needs a sliding_window: without one every key is attended already

// -----

func.func @f(%q : tensor<2x1x8x8xf16>, %kv : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, %t : tensor<2x4xi32>, %l : tensor<2xi32>) {
  %o = llm.paged_attention %q, %kv, %t, %l {sliding_window = 16 : i32, sink_tokens = 0 : i32} : (tensor<2x1x8x8xf16>, !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>, tensor<2x4xi32>, tensor<2xi32>) -> tensor<2x1x8x8xf16>
  func.return
}

// CHECK: llm.paged_attention: sink_tokens must be an integer in [1, 2147483647], got 0

// -----

%kv = llm.create_kv_cache {num_blocks = 8 : i64, heavy_hitter_blocks = 6 : i64} : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

// CHECK: llm.create_kv_cache: heavy_hitter_blocks needs window_tokens (without a window nothing is pruned)

// -----

%kv = llm.create_kv_cache {num_blocks = 8 : i64, window_tokens = 32 : i64, sink_tokens = 4 : i64, heavy_hitter_blocks = 3 : i64} : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

// CHECK: llm.create_kv_cache: heavy_hitter_blocks 3 is below the 4 blocks the sinks and the window need

// -----

%kv = llm.create_kv_cache {num_blocks = 8 : i64, window_tokens = 32 : i64, heavy_hitter_blocks = 6 : i64, heavy_hitter_score = "max"} : !llm.paged_kv_cache<f16, 2, 4, 8, 16, 64>

// CHECK: llm.create_kv_cache: unknown heavy_hitter_score "max", expected one of mean, sum
