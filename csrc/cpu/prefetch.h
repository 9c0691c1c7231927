// Software prefetch for the CPU kernels, which stream several buffers at once: the dense step reads four or
// five and writes three or four, the 8-bit step visits its buffers block by block. On this project's Xeon the
// hardware prefetchers alone leave a 32 Mi-element step well short of the memory's speed (each kernel says by
// how much), so the kernels ask for the lines a fixed distance ahead of the ones they update.
#pragma once

#include <cstdint>

namespace adadelta_fused {

// How far ahead of the elements being updated each buffer is prefetched by the dense kernel (the 8-bit kernel
// prefetches two blocks ahead, quantized_cpu.cpp). 32 Mi elements, 2 threads, ms per step in one window (the VM
// drifts between windows), no prefetch / 1 / 2 / 4 KiB ahead: fp32 21.3-23.9 / 18.7-19.0 / 18.8-18.9 /
// 19.4-19.9; bf16 params with fp32 state 18.3-18.4 / 14.4-14.6 / 14.4-14.5 / 14.9-15.2; fp16 13.7-14.0 /
// 11.7-12.0 / 11.9-12.1 / 12.6-13.5 (bench/results/prefetch-20261203/sweeps.md).
constexpr uintptr_t kPrefetchBytes = 2048;

// Prefetches the lines of [begin, begin + bytes). The addresses are integers until the prefetch, which never
// faults: a caller may ask for lines past the end of its buffer.
__attribute__((always_inline)) inline void prefetch_lines(uintptr_t begin, int64_t bytes) {
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(reinterpret_cast<const void*>(begin + uintptr_t(b)));
}

template <typename T>
__attribute__((always_inline)) inline void prefetch_lines(const T* begin, int64_t bytes) {
  prefetch_lines(reinterpret_cast<uintptr_t>(begin), bytes);
}

// The lines of the `count` elements kPrefetchBytes past `first` (one line by default).
template <typename T>
__attribute__((always_inline)) inline void prefetch_ahead(const T* first, int64_t count = 1) {
  prefetch_lines(reinterpret_cast<uintptr_t>(first) + kPrefetchBytes, count * int64_t(sizeof(T)));
}

}  // namespace adadelta_fused
