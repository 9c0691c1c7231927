#include <cstdio>
#include "timing.h"
#include <cstdint>
#define R(x) x x x x
// body macros: independent ops on separate registers; inputs zmm0..; outputs to distinct regs
#define SQ(d) "vsqrtps %%zmm1, %%zmm" #d "\n"
#define DV(d) "vdivps %%zmm2, %%zmm1, %%zmm" #d "\n"
#define FM(d) "vfmadd231ps %%zmm1, %%zmm2, %%zmm" #d "\n"
#define AD(d) "vaddps %%zmm1, %%zmm2, %%zmm" #d "\n"
#define IN(d) "vpmaxud %%zmm1, %%zmm2, %%zmm" #d "\n"
#define CV(d) "vcvtdq2ps %%zmm1, %%zmm" #d "\n"
#define RS(d) "vrsqrt14ps %%zmm1, %%zmm" #d "\n"
#define MU(d) "vmulps %%zmm1, %%zmm2, %%zmm" #d "\n"
template <int K> __attribute__((noinline)) void run(long n) {
  for (long i = 0; i < n; ++i) {
    if constexpr (K == 0) asm volatile(SQ(3) SQ(4) SQ(5) SQ(6) ::: "xmm3","xmm4","xmm5","xmm6");
    if constexpr (K == 1) asm volatile(DV(3) DV(4) DV(5) DV(6) ::: "xmm3","xmm4","xmm5","xmm6");
    if constexpr (K == 2) asm volatile(SQ(3) SQ(4) SQ(5) DV(6) ::: "xmm3","xmm4","xmm5","xmm6");
    // 20 FMA-pipe ops (independent, 8 accumulators -> latency-4 chains; 20/8*4 = 10 < 20)
    if constexpr (K == 3) asm volatile(FM(10) FM(11) FM(12) FM(13) FM(14) FM(15) FM(16) FM(17) FM(10) FM(11) FM(12) FM(13) FM(14) FM(15) FM(16) FM(17) FM(10) FM(11) FM(12) FM(13) ::: "xmm10","xmm11","xmm12","xmm13","xmm14","xmm15","xmm16","xmm17");
    if constexpr (K == 4) asm volatile(SQ(3) FM(10) FM(11) FM(12) FM(13) FM(14) SQ(4) FM(15) FM(16) FM(17) FM(10) FM(11) SQ(5) FM(12) FM(13) FM(14) FM(15) FM(16) DV(6) FM(17) FM(10) FM(11) FM(12) FM(13) ::: "xmm3","xmm4","xmm5","xmm6","xmm10","xmm11","xmm12","xmm13","xmm14","xmm15","xmm16","xmm17");
    // the loop's mix per 16 elems: 3 sqrt, 1 div, 19 mul/fma, 2 cvt, 1 rsqrt14, 2 add, 4 int
    if constexpr (K == 5) asm volatile(SQ(3) FM(10) FM(11) CV(20) FM(12) MU(13) FM(14) SQ(4) FM(15) AD(21) FM(16) MU(17) IN(22) FM(10) FM(11) SQ(5) FM(12) CV(23) FM(13) IN(24) FM(14) RS(25) FM(15) FM(16) DV(6) AD(26) FM(17) IN(27) FM(10) IN(28) ::: "xmm3","xmm4","xmm5","xmm6","xmm10","xmm11","xmm12","xmm13","xmm14","xmm15","xmm16","xmm17","xmm20","xmm21","xmm22","xmm23","xmm24","xmm25","xmm26","xmm27","xmm28");
    if constexpr (K == 6) asm volatile(FM(10) FM(11) CV(20) FM(12) MU(13) FM(14) FM(15) AD(21) FM(16) MU(17) IN(22) FM(10) FM(11) FM(12) CV(23) FM(13) IN(24) FM(14) RS(25) FM(15) FM(16) AD(26) FM(17) IN(27) FM(10) IN(28) ::: "xmm3","xmm4","xmm5","xmm6","xmm10","xmm11","xmm12","xmm13","xmm14","xmm15","xmm16","xmm17","xmm20","xmm21","xmm22","xmm23","xmm24","xmm25","xmm26","xmm27","xmm28");
    if constexpr (K == 7) asm volatile(CV(3) CV(4) CV(5) CV(6) ::: "xmm3","xmm4","xmm5","xmm6");
    if constexpr (K == 8) asm volatile(RS(3) RS(4) RS(5) RS(6) ::: "xmm3","xmm4","xmm5","xmm6");
    if constexpr (K == 9) asm volatile(AD(3) AD(4) AD(5) AD(6) ::: "xmm3","xmm4","xmm5","xmm6");
    if constexpr (K == 10) asm volatile(IN(3) IN(4) IN(5) IN(6) ::: "xmm3","xmm4","xmm5","xmm6");
    if constexpr (K == 11) asm volatile(SQ(3) SQ(4) SQ(5) SQ(6) AD(7) AD(8) AD(9) AD(10) AD(11) AD(12) AD(13) AD(14) ::: "xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13","xmm14");
    if constexpr (K == 12) asm volatile(SQ(3) SQ(4) SQ(5) SQ(6) CV(7) CV(8) CV(9) CV(10) ::: "xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10");
    if constexpr (K == 13) asm volatile(SQ(3) SQ(4) SQ(5) SQ(6) IN(7) IN(8) IN(9) IN(10) IN(11) IN(12) IN(13) IN(14)::: "xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13","xmm14");
    if constexpr (K == 14) asm volatile(SQ(3) SQ(4) SQ(5) SQ(6) RS(7) RS(8) RS(9) RS(10) ::: "xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10");
  }
}
template <int K> void t(const char* name, int ops) {
  set_asm_operands();
  const double cycles = best_cycles_per_iteration(run<K>, 2000000);
  printf("%-40s %7.2f cycles/iter (@3.67GHz), %5.2f per op-group\n", name, cycles, cycles / ops);
}
int main() {
  t<0>("4 vsqrtps zmm", 4);
  t<1>("4 vdivps zmm", 4);
  t<2>("3 vsqrtps + 1 vdivps", 1);
  t<3>("20 fma zmm", 20);
  t<4>("3 sqrt + 1 div + 20 fma", 1);
  t<5>("loop mix: 3sq 1dv 19fma 2cvt rsq 2add 4int", 1);
  t<6>("same, no divider", 1);
  t<7>("4 cvtdq2ps", 4);
  t<8>("4 rsqrt14", 4);
  t<9>("4 add", 4);
  t<10>("4 pmaxud", 4);
  t<11>("4 sqrt + 8 add", 1);
  t<12>("4 sqrt + 4 cvt", 1);
  t<13>("4 sqrt + 8 int", 1);
  t<14>("4 sqrt + 4 rsqrt14", 1);
}
