#include <cstdio>
#include "timing.h"
alignas(64) static char buf[4096];
#define SQ(d) "vsqrtps %%zmm1, %%zmm" #d "\n"
#define DV(d) "vdivps %%zmm2, %%zmm1, %%zmm" #d "\n"
#define PM(d) "vpmovdb %%zmm1, %%xmm" #d "\n"
#define PMS(o) "vpmovdb %%zmm1, " #o "(%0)\n"
#define MU(d) "vmulps %%zmm1, %%zmm2, %%zmm" #d "\n"
#define AD(d) "vaddps %%zmm1, %%zmm2, %%zmm" #d "\n"
#define ST(o,r) "vmovups %%zmm" #r ", " #o "(%0)\n"
#define STX(o,r) "vmovdqu %%xmm" #r ", " #o "(%0)\n"
#define LD(o,d) "vmovups " #o "(%0), %%zmm" #d "\n"
#define ZX(o,d) "vpmovzxbd " #o "(%0), %%zmm" #d "\n"
#define DS(d) "vdivss %%xmm2, %%xmm1, %%xmm" #d "\n"
template <int K> __attribute__((noinline)) void run(long n) {
  char* p = buf;
  for (long i = 0; i < n; ++i) {
    if constexpr (K == 0) asm volatile(PM(3) PM(4) PM(5) PM(6) :: "r"(p) : "xmm3","xmm4","xmm5","xmm6");
    if constexpr (K == 1) asm volatile(SQ(7) SQ(8) SQ(9) SQ(10) PM(3) PM(4) PM(5) PM(6) PM(11) PM(12) PM(13) PM(14) :: "r"(p) : "xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13","xmm14");
    if constexpr (K == 2) asm volatile(SQ(7) SQ(8) SQ(9) SQ(10) ST(0,1) ST(64,1) ST(128,1) ST(192,1) ST(256,1) ST(320,1) ST(384,1) ST(448,1) :: "r"(p) : "xmm7","xmm8","xmm9","xmm10", "memory");
    if constexpr (K == 3) asm volatile(SQ(7) SQ(8) SQ(9) SQ(10) LD(0,3) LD(64,4) LD(128,5) LD(192,6) ZX(256,11) ZX(272,12) ZX(288,13) ZX(304,14) :: "r"(p) : "xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13","xmm14");
    if constexpr (K == 4) asm volatile(ST(0,1) ST(64,1) ST(128,1) ST(192,1) ST(256,1) ST(320,1) ST(384,1) ST(448,1) :: "r"(p) : "memory");
    if constexpr (K == 5) asm volatile(SQ(7) SQ(8) SQ(9) SQ(10) DS(3) DS(4) DS(5) DS(6) :: "r"(p) : "xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10");
    if constexpr (K == 6) asm volatile(SQ(7) SQ(8) SQ(9) SQ(10) PMS(0) PMS(16) PMS(32) PMS(48) PMS(64) PMS(80) PMS(96) PMS(112) :: "r"(p) : "xmm7","xmm8","xmm9","xmm10","memory");
    if constexpr (K == 7) asm volatile(SQ(7) SQ(8) SQ(9) DV(10) MU(3) AD(4) PM(5) STX(512,5) MU(11) AD(12) PM(13) STX(528,13) :: "r"(p) : "xmm3","xmm4","xmm5","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13","memory");
  }
}
template <int K> void t(const char* name, int ops) {
  set_asm_operands();
  const double cycles = best_cycles_per_iteration(run<K>, 2000000);
  printf("%-40s %7.2f cycles/iter (@3.67GHz), %5.2f per op-group\n", name, cycles, cycles / ops);
}
int main() {
  t<0>("4 vpmovdb zmm->xmm", 4);
  t<1>("4 sqrt + 8 vpmovdb", 1);
  t<2>("4 sqrt + 8 zmm stores", 1);
  t<3>("4 sqrt + 4 zmm loads + 4 pmovzxbd-load", 1);
  t<4>("8 zmm stores", 8);
  t<5>("4 sqrt + 4 vdivss", 1);
  t<6>("4 sqrt + 8 vpmovdb to mem", 1);
  t<7>("3sq 1dv + 2x(mul add pmovdb store16)", 1);
}
