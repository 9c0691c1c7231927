#include <cstdio>
#include <ctime>
static double now() { timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
#define SQ(d) "vsqrtps %%zmm1, %%zmm" #d "\n"
#define DS(d) "vdivss %%xmm2, %%xmm1, %%xmm" #d "\n"
#define SS(d) "vsqrtss %%xmm2, %%xmm1, %%xmm" #d "\n"
#define DY(d) "vdivps %%ymm2, %%ymm1, %%ymm" #d "\n"
#define SY(d) "vsqrtps %%ymm1, %%ymm" #d "\n"
template <int K> __attribute__((noinline)) void run(long n) {
  for (long i = 0; i < n; ++i) {
    if constexpr (K == 0) asm volatile(DS(3) DS(4) DS(5) DS(6) ::: "xmm3","xmm4","xmm5","xmm6");
    if constexpr (K == 1) asm volatile(SS(3) SS(4) SS(5) SS(6) ::: "xmm3","xmm4","xmm5","xmm6");
    if constexpr (K == 2) asm volatile(DY(3) DY(4) DY(5) DY(6) ::: "xmm3","xmm4","xmm5","xmm6");
    if constexpr (K == 3) asm volatile(SY(3) SY(4) SY(5) SY(6) ::: "xmm3","xmm4","xmm5","xmm6");
    if constexpr (K == 4) asm volatile("vdivss %%xmm3, %%xmm2, %%xmm3\n" ::: "xmm3");  // latency
    if constexpr (K == 5) asm volatile("vsqrtps %%zmm3, %%zmm3\n" ::: "xmm3");  // latency
    if constexpr (K == 6) asm volatile("vdivps %%zmm3, %%zmm2, %%zmm3\n" ::: "xmm3");  // latency
  }
}
template <int K> void t(const char* name, int ops) {
  asm volatile("vbroadcastss %0, %%zmm1\n vbroadcastss %1, %%zmm2\n vbroadcastss %1, %%zmm3" :: "m"(*(const float[]){1.7f}), "m"(*(const float[]){1.3f}) : "xmm1", "xmm2", "xmm3");
  const long n = 2000000;
  double best = 1e30;
  for (int r = 0; r < 5; ++r) { double t0 = now(); run<K>(n); double t1 = now(); if (t1 - t0 < best) best = t1 - t0; }
  printf("%-40s %7.2f cycles/iter (@3.67GHz), %5.2f per op\n", name, best / n * 3.67, best / n * 3.67 / ops);
}
int main() {
  t<0>("4 vdivss", 4); t<1>("4 vsqrtss", 4); t<2>("4 vdivps ymm", 4); t<3>("4 vsqrtps ymm", 4);
  t<4>("vdivss latency", 1); t<5>("vsqrtps zmm latency", 1); t<6>("vdivps zmm latency", 1);
}
