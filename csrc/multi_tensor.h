// The multi-tensor walk shared by the CPU and CUDA kernels: the host packs tensor lists into launches
// of fixed-size chunks, and each block (a CUDA thread block, or a CPU task) maps its number to one
// chunk of one tensor. The CPU kernel runs this exact indexing, so CI exercises the CUDA kernel's.
#pragma once

#include <cstdint>
#include <type_traits>

#include "host_device.h"

namespace adadelta_fused {

// 64 Ki elements per chunk: 256 KiB of fp32 per buffer, enough work per CUDA block (512 threads x 4
// vectors of 4 x 8 iterations) and per CPU task (tens of microseconds) to hide the scheduling cost. No more:
// the CPU lanes key the rounding noise once per chunk, which needs a chunk's indices to share their upper 16
// bits (rounding.h rounding_run_key; static_assert in cpu/adadelta_cpu.cpp).
constexpr int64_t kChunkElements = 65536;

// Sized to fit CUDA's 32764-byte kernel-argument limit (sm_70+ with CUDA >= 12.1; CUDA 13 builds only
// such targets): 256 * (5 pointers + numel + index) + 2048 * (slot + chunk) = 25,600 bytes.
constexpr int kMaxTensorsPerLaunch = 256;
constexpr int kMaxBlocksPerLaunch = 2048;

struct TensorListMeta {
  void* param[kMaxTensorsPerLaunch];
  void* grad[kMaxTensorsPerLaunch];
  void* square_avg[kMaxTensorsPerLaunch];
  void* acc_delta[kMaxTensorsPerLaunch];
  float* master[kMaxTensorsPerLaunch];  // null without master weights
  int64_t numel[kMaxTensorsPerLaunch];
  int32_t tensor_index[kMaxTensorsPerLaunch];  // position in the op's lists: keys the rounding noise
  uint16_t block_slot[kMaxBlocksPerLaunch];    // which tensor slot a block works on
  int32_t block_chunk[kMaxBlocksPerLaunch];    // which chunk of that tensor
};
// (The multi-tensor kernel's other argument, StepArgs, adds 64 bytes: static_assert in adadelta_cuda.cu.)
static_assert(sizeof(TensorListMeta) <= 32764, "must fit the CUDA kernel-argument limit");

// The quantized op's launches add each tensor's two scale vectors (quantized_state.h): 29,696 bytes.
struct QuantizedListMeta : TensorListMeta {
  float* square_avg_scale[kMaxTensorsPerLaunch];
  float* acc_delta_scale[kMaxTensorsPerLaunch];
};
static_assert(sizeof(QuantizedListMeta) <= 32764, "must fit the CUDA kernel-argument limit");

struct ChunkRange {
  int slot;
  int64_t begin;  // first element of the chunk in its tensor (64-bit: tensors may exceed 2^31)
  int64_t end;    // one past the last
};

ADF_HOST_DEVICE ChunkRange chunk_of_block(const TensorListMeta& meta, int block) {
  const int slot = meta.block_slot[block];
  const int64_t begin = int64_t(meta.block_chunk[block]) * kChunkElements;
  const int64_t stop = begin + kChunkElements;
  return {slot, begin, stop < meta.numel[slot] ? stop : meta.numel[slot]};
}

// The raw buffers of one op call, one entry per tensor.
struct TensorListPointers {
  void* const* param;
  void* const* grad;
  void* const* square_avg;
  void* const* acc_delta;
  float* const* master;  // null pointer list without master weights
  const int64_t* numel;
  int64_t count;
  float* const* square_avg_scale = nullptr;  // the quantized op's scales (null for the dense op)
  float* const* acc_delta_scale = nullptr;
};

// Host side: fills `meta` and calls launch(meta, num_blocks) each time it is full, and once at the end.
// A tensor whose chunks span two launches continues in slot 0 of the next one. Empty tensors take no
// block. Everything is known on the host from sizes alone, so the CUDA path needs no sync.
template <typename Meta, typename Launch>
void pack_launches(const TensorListPointers& t, Meta& meta, Launch&& launch) {
  constexpr bool kQuantized = std::is_same_v<Meta, QuantizedListMeta>;
  int slot = 0;
  int blocks = 0;
  for (int64_t i = 0; i < t.count; ++i) {
    if (t.numel[i] == 0) continue;
    meta.param[slot] = t.param[i];
    meta.grad[slot] = t.grad[i];
    meta.square_avg[slot] = t.square_avg[i];
    meta.acc_delta[slot] = t.acc_delta[i];
    meta.master[slot] = t.master != nullptr ? t.master[i] : nullptr;
    meta.numel[slot] = t.numel[i];
    meta.tensor_index[slot] = int32_t(i);
    if constexpr (kQuantized) {
      meta.square_avg_scale[slot] = t.square_avg_scale[i];
      meta.acc_delta_scale[slot] = t.acc_delta_scale[i];
    }
    const int64_t chunks = (t.numel[i] + kChunkElements - 1) / kChunkElements;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      meta.block_slot[blocks] = uint16_t(slot);
      meta.block_chunk[blocks] = int32_t(chunk);
      ++blocks;
      const bool last_chunk = chunk + 1 == chunks;
      if (blocks == kMaxBlocksPerLaunch || (last_chunk && slot + 1 == kMaxTensorsPerLaunch)) {
        launch(meta, blocks);
        blocks = 0;
        if (!last_chunk) {
          meta.param[0] = meta.param[slot];
          meta.grad[0] = meta.grad[slot];
          meta.square_avg[0] = meta.square_avg[slot];
          meta.acc_delta[0] = meta.acc_delta[slot];
          meta.master[0] = meta.master[slot];
          meta.numel[0] = meta.numel[slot];
          meta.tensor_index[0] = meta.tensor_index[slot];
          if constexpr (kQuantized) {
            meta.square_avg_scale[0] = meta.square_avg_scale[slot];
            meta.acc_delta_scale[0] = meta.acc_delta_scale[slot];
          }
          slot = 0;
        } else {
          slot = -1;  // the next tensor starts the new launch at slot 0
        }
      }
    }
    ++slot;
  }
  if (blocks > 0) launch(meta, blocks);
}

}  // namespace adadelta_fused
