#include <cstdio>
#include "timing.h"
#include <random>
#include <immintrin.h>
alignas(64) float buf[1 << 12];
template <int K> __attribute__((noinline, target("avx512f"))) void run(long n) {
  const int m = 1 << 12;
  for (long i = 0; i < n; ++i) {
    const float* p = buf + (i * 64) % m;
    __m512 a = _mm512_load_ps(p), b = _mm512_load_ps(p + 16), c = _mm512_load_ps(p + 32), d = _mm512_load_ps(p + 48);
    __m512 r0, r1, r2, r3;
    if constexpr (K == 0) { r0 = _mm512_sqrt_ps(a); r1 = _mm512_sqrt_ps(b); r2 = _mm512_sqrt_ps(c); r3 = _mm512_sqrt_ps(d); }
    if constexpr (K == 1) { r0 = _mm512_div_ps(a, b); r1 = _mm512_div_ps(b, c); r2 = _mm512_div_ps(c, d); r3 = _mm512_div_ps(d, a); }
    if constexpr (K == 2) { r0 = _mm512_sqrt_ps(a); r1 = _mm512_sqrt_ps(b); r2 = _mm512_sqrt_ps(c); r3 = _mm512_div_ps(d, a); }
    asm volatile("" :: "v"(r0), "v"(r1), "v"(r2), "v"(r3));
  }
}
template <int K> void t(const char* name, int ops) {
  const double cycles = best_cycles_per_iteration(run<K>, 2000000);
  printf("%-40s %7.2f cycles/iter, %5.2f per op\n", name, cycles, cycles / ops);
}
int main() {
  std::mt19937 rng(1); std::uniform_real_distribution<float> u(1e-8f, 1e-2f);
  for (auto& x : buf) x = 1.7f;
  t<0>("4 sqrt const", 4); t<1>("4 div const", 4); t<2>("3 sqrt + div const", 1);
  for (auto& x : buf) x = u(rng);
  t<0>("4 sqrt random", 4); t<1>("4 div random", 4); t<2>("3 sqrt + div random", 1);
}
