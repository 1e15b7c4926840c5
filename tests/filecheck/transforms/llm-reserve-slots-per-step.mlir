// RUN: xdsl-opt %s -p llm-reserve-slots-per-step | filecheck %s
// Idempotent, and the result verifies and round-trips:
// RUN: xdsl-opt %s -p llm-reserve-slots-per-step > %t.mlir && xdsl-opt %t.mlir -p llm-reserve-slots-per-step | diff %t.mlir -

!cache = !llm.paged_kv_cache<f32, 2, 2, 8, 4, 64>

// A decode step of two layers: one reservation, two writes; the step's
// block table read comes from the reservation.
// CHECK-LABEL: func.func @step
// CHECK-NEXT: %reserved, %slots, %t, %l = llm.reserve_slots %c, %ids {num_tokens = 1 : i32} : (!llm.paged_kv_cache<f32, 2, 2, 8, 4, 64>, tensor<3xi32>) -> (!llm.paged_kv_cache<f32, 2, 2, 8, 4, 64>, tensor<2x3x1xi32>, tensor<3x16xi32>, tensor<3xi32>)
// CHECK-NEXT: %c1 = llm.write_kv %reserved, %x, %x, %slots : (!llm.paged_kv_cache<f32, 2, 2, 8, 4, 64>, tensor<3x1x2x8xf32>, tensor<3x1x2x8xf32>, tensor<2x3x1xi32>) -> !llm.paged_kv_cache<f32, 2, 2, 8, 4, 64>
// CHECK-NEXT: %y = llm.paged_attention %x, %c1, %t, %l
// CHECK-NEXT: %c2 = llm.write_kv %c1, %y, %y, %slots {layer = 1 : i32}
// CHECK-NEXT: %z = llm.paged_attention %y, %c2, %t, %l {layer = 1 : i32}
// CHECK-NEXT: func.return %z, %c2
func.func @step(%c : !cache, %x : tensor<3x1x2x8xf32>, %ids : tensor<3xi32>) -> (tensor<3x1x2x8xf32>, !cache) {
  %c1, %i1 = llm.append_kv %c, %x, %x, %ids : (!cache, tensor<3x1x2x8xf32>, tensor<3x1x2x8xf32>, tensor<3xi32>) -> (!cache, tensor<3x1xi32>)
  %t, %l = llm.block_table %c1, %ids : (!cache, tensor<3xi32>) -> (tensor<3x16xi32>, tensor<3xi32>)
  %y = llm.paged_attention %x, %c1, %t, %l : (tensor<3x1x2x8xf32>, !cache, tensor<3x16xi32>, tensor<3xi32>) -> tensor<3x1x2x8xf32>
  %c2, %i2 = llm.append_kv %c1, %y, %y, %ids {layer = 1 : i32} : (!cache, tensor<3x1x2x8xf32>, tensor<3x1x2x8xf32>, tensor<3xi32>) -> (!cache, tensor<3x1xi32>)
  %z = llm.paged_attention %y, %c2, %t, %l {layer = 1 : i32} : (tensor<3x1x2x8xf32>, !cache, tensor<3x16xi32>, tensor<3xi32>) -> tensor<3x1x2x8xf32>
  func.return %z, %c2 : tensor<3x1x2x8xf32>, !cache
}

// Layers in another order, a prefill of 5 tokens, no table read: still one
// step (the reservation's table is dynamic and unused).
// CHECK-LABEL: func.func @reversed_prefill
// CHECK-NEXT: %reserved, %slots, %{{.*}}, %{{.*}} = llm.reserve_slots %c, %ids {num_tokens = 5 : i32} {{.*}} -> (!llm.paged_kv_cache<f32, 2, 2, 8, 4, 64>, tensor<2x1x5xi32>, tensor<1x?xi32>, tensor<1xi32>)
// CHECK-NEXT: llm.write_kv %reserved, %x, %x, %slots {layer = 1 : i32}
// CHECK-NEXT: llm.write_kv %{{.*}}, %x, %x, %slots :
func.func @reversed_prefill(%c : !cache, %x : tensor<1x5x2x8xf32>, %ids : tensor<1xi32>) -> !cache {
  %c1, %i1 = llm.append_kv %c, %x, %x, %ids {layer = 1 : i32} : (!cache, tensor<1x5x2x8xf32>, tensor<1x5x2x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x5xi32>)
  %c2, %i2 = llm.append_kv %c1, %x, %x, %ids : (!cache, tensor<1x5x2x8xf32>, tensor<1x5x2x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x5xi32>)
  func.return %c2 : !cache
}

// Left alone: a partial step (one of two layers).
// CHECK-LABEL: func.func @partial
// CHECK-NEXT: llm.append_kv
// CHECK-NOT: llm.reserve_slots
func.func @partial(%c : !cache, %x : tensor<1x1x2x8xf32>, %ids : tensor<1xi32>) -> !cache {
  %c1, %i1 = llm.append_kv %c, %x, %x, %ids : (!cache, tensor<1x1x2x8xf32>, tensor<1x1x2x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x1xi32>)
  func.return %c1 : !cache
}

// Left alone: the layers append for different sequence ids.
// CHECK-LABEL: func.func @other_ids
// CHECK-NEXT: llm.append_kv
// CHECK-NEXT: llm.append_kv
func.func @other_ids(%c : !cache, %x : tensor<1x1x2x8xf32>, %a : tensor<1xi32>, %b : tensor<1xi32>) -> !cache {
  %c1, %i1 = llm.append_kv %c, %x, %x, %a : (!cache, tensor<1x1x2x8xf32>, tensor<1x1x2x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x1xi32>)
  %c2, %i2 = llm.append_kv %c1, %x, %x, %b {layer = 1 : i32} : (!cache, tensor<1x1x2x8xf32>, tensor<1x1x2x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x1xi32>)
  func.return %c2 : !cache
}

// Left alone: a dynamic token count.
// CHECK-LABEL: func.func @dynamic_tokens
// CHECK-NEXT: llm.append_kv
// CHECK-NEXT: llm.append_kv
func.func @dynamic_tokens(%c : !cache, %x : tensor<1x?x2x8xf32>, %ids : tensor<1xi32>) -> !cache {
  %c1, %i1 = llm.append_kv %c, %x, %x, %ids : (!cache, tensor<1x?x2x8xf32>, tensor<1x?x2x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x?xi32>)
  %c2, %i2 = llm.append_kv %c1, %x, %x, %ids {layer = 1 : i32} : (!cache, tensor<1x?x2x8xf32>, tensor<1x?x2x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x?xi32>)
  func.return %c2 : !cache
}

// Left alone: token counts that differ between the layers.
// CHECK-LABEL: func.func @other_counts
// CHECK-NEXT: llm.append_kv
// CHECK-NEXT: llm.append_kv
func.func @other_counts(%c : !cache, %x : tensor<1x1x2x8xf32>, %y : tensor<1x2x2x8xf32>, %ids : tensor<1xi32>) -> !cache {
  %c1, %i1 = llm.append_kv %c, %x, %x, %ids : (!cache, tensor<1x1x2x8xf32>, tensor<1x1x2x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x1xi32>)
  %c2, %i2 = llm.append_kv %c1, %y, %y, %ids {layer = 1 : i32} : (!cache, tensor<1x2x2x8xf32>, tensor<1x2x2x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x2xi32>)
  func.return %c2 : !cache
}

// Left alone: token ids (reserved positions are not indexed for prefix
// caching), and block indices that the program uses.
// CHECK-LABEL: func.func @token_ids
// CHECK-NEXT: llm.append_kv
// CHECK-NEXT: llm.append_kv
func.func @token_ids(%c : !cache, %x : tensor<1x1x2x8xf32>, %ids : tensor<1xi32>, %tok : tensor<1x1xi32>) -> !cache {
  %c1, %i1 = llm.append_kv %c, %x, %x, %ids, %tok : (!cache, tensor<1x1x2x8xf32>, tensor<1x1x2x8xf32>, tensor<1xi32>, tensor<1x1xi32>) -> (!cache, tensor<1x1xi32>)
  %c2, %i2 = llm.append_kv %c1, %x, %x, %ids, %tok {layer = 1 : i32} : (!cache, tensor<1x1x2x8xf32>, tensor<1x1x2x8xf32>, tensor<1xi32>, tensor<1x1xi32>) -> (!cache, tensor<1x1xi32>)
  func.return %c2 : !cache
}

// CHECK-LABEL: func.func @indices_used
// CHECK-NEXT: llm.append_kv
// CHECK-NEXT: llm.append_kv
func.func @indices_used(%c : !cache, %x : tensor<1x1x2x8xf32>, %ids : tensor<1xi32>) -> (!cache, tensor<1x1xi32>) {
  %c1, %i1 = llm.append_kv %c, %x, %x, %ids : (!cache, tensor<1x1x2x8xf32>, tensor<1x1x2x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x1xi32>)
  %c2, %i2 = llm.append_kv %c1, %x, %x, %ids {layer = 1 : i32} : (!cache, tensor<1x1x2x8xf32>, tensor<1x1x2x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x1xi32>)
  func.return %c2, %i2 : !cache, tensor<1x1xi32>
}

// Left alone: the second layer's append is inside other control flow.
// CHECK-LABEL: func.func @control_flow
// CHECK-NEXT: llm.append_kv
// CHECK: scf.if
// CHECK-NEXT: llm.append_kv
func.func @control_flow(%c : !cache, %x : tensor<1x1x2x8xf32>, %ids : tensor<1xi32>, %p : i1) -> !cache {
  %c1, %i1 = llm.append_kv %c, %x, %x, %ids : (!cache, tensor<1x1x2x8xf32>, tensor<1x1x2x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x1xi32>)
  %c2 = scf.if %p -> (!cache) {
    %c3, %i3 = llm.append_kv %c1, %x, %x, %ids {layer = 1 : i32} : (!cache, tensor<1x1x2x8xf32>, tensor<1x1x2x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x1xi32>)
    scf.yield %c3 : !cache
  } else {
    scf.yield %c1 : !cache
  }
  func.return %c2 : !cache
}

// Two steps back to back: two reservations.
// CHECK-LABEL: func.func @two_steps
// CHECK-COUNT-2: llm.reserve_slots
// CHECK-NOT: llm.append_kv
func.func @two_steps(%c : !cache, %x : tensor<1x1x2x8xf32>, %ids : tensor<1xi32>) -> !cache {
  %c1, %i1 = llm.append_kv %c, %x, %x, %ids : (!cache, tensor<1x1x2x8xf32>, tensor<1x1x2x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x1xi32>)
  %c2, %i2 = llm.append_kv %c1, %x, %x, %ids {layer = 1 : i32} : (!cache, tensor<1x1x2x8xf32>, tensor<1x1x2x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x1xi32>)
  %c3, %i3 = llm.append_kv %c2, %x, %x, %ids : (!cache, tensor<1x1x2x8xf32>, tensor<1x1x2x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x1xi32>)
  %c4, %i4 = llm.append_kv %c3, %x, %x, %ids {layer = 1 : i32} : (!cache, tensor<1x1x2x8xf32>, tensor<1x1x2x8xf32>, tensor<1xi32>) -> (!cache, tensor<1x1xi32>)
  func.return %c4 : !cache
}
