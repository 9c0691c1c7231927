#include <cstdio>
#include "timing.h"
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
  set_asm_operands();
  asm volatile("vbroadcastss %0, %%zmm3" :: "m"(*(const float[]){1.3f}) : "xmm3");  // the latency chains' start
  const double cycles = best_cycles_per_iteration(run<K>, 2000000);
  printf("%-40s %7.2f cycles/iter (@3.67GHz), %5.2f per op\n", name, cycles, cycles / ops);
}
int main() {
  t<0>("4 vdivss", 4); t<1>("4 vsqrtss", 4); t<2>("4 vdivps ymm", 4); t<3>("4 vsqrtps ymm", 4);
  t<4>("vdivss latency", 1); t<5>("vsqrtps zmm latency", 1); t<6>("vdivps zmm latency", 1);
}
