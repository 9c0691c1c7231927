// 128-bit global loads and stores of a thread's run of elements, for any storage type.
//
// A thread owns kVec consecutive elements of every buffer, where kVec puts 16 bytes of the narrowest
// buffer in one vector: 4 fp32, 8 bf16/fp16, 2 fp64. Wider buffers of the same run take two (or four)
// 16-byte words, so every access of the vector path is an LDG.E.128 / STG.E.128 (tests/test_cuda_sass.py
// counts them in the built kernels).
#pragma once

#include <cstdint>

namespace adadelta_fused {

template <typename... Ts>
constexpr int narrowest_bytes() {
  int bytes = 16;
  ((bytes = int(sizeof(Ts)) < bytes ? int(sizeof(Ts)) : bytes), ...);
  return bytes;
}

// Elements per thread so that the narrowest of the given storage types fills one 16-byte word.
template <typename... Ts>
constexpr int kVectorElements = 16 / narrowest_bytes<Ts...>();

template <typename T>
__device__ __forceinline__ bool is_16_byte_aligned(const T* ptr) {
  return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0;
}

// The words are moved as uint4, the one type nvcc always turns into a single 128-bit access; the
// element values live in registers (a union keeps them out of local memory, which memcpy into an array
// of scoped enums did not guarantee).
template <typename T, int N>
union VectorWords {
  static_assert(sizeof(T) * N % 16 == 0, "a thread's run must be whole 16-byte words");
  static constexpr int kWords = int(sizeof(T)) * N / 16;
  uint4 words[kWords];
  T values[N];
};

template <typename T, int N>
__device__ __forceinline__ void load_vector(const T* src, T (&dst)[N]) {
  VectorWords<T, N> v;
  const uint4* from = reinterpret_cast<const uint4*>(src);
#pragma unroll
  for (int w = 0; w < VectorWords<T, N>::kWords; ++w) v.words[w] = from[w];
#pragma unroll
  for (int k = 0; k < N; ++k) dst[k] = v.values[k];
}

template <typename T, int N>
__device__ __forceinline__ void store_vector(T* dst, const T (&src)[N]) {
  VectorWords<T, N> v;
#pragma unroll
  for (int k = 0; k < N; ++k) v.values[k] = src[k];
  uint4* to = reinterpret_cast<uint4*>(dst);
#pragma unroll
  for (int w = 0; w < VectorWords<T, N>::kWords; ++w) to[w] = v.words[w];
}

}  // namespace adadelta_fused
