// Exhaustive: scale / 254.0f  ==  q1 = fma(fma(-q0, 254, s), r, q0), q0 = s * r, r = RN(1/254)   over all fp32 bits
#include <immintrin.h>
#include <cstdio>
#include <cstdint>
#include <cstring>
__attribute__((target("avx512f"))) int main() {
  const __m512 r = _mm512_set1_ps(1.0f / 254.0f);
  const __m512 c = _mm512_set1_ps(254.0f);
  uint32_t maxabs = 0; uint64_t bad = 0, bad_in_range = 0; uint32_t first_bad = 0, last_bad = 0;
  for (uint64_t base = 0; base < (1ull << 32); base += 16) {
    __m512i bits = _mm512_add_epi32(_mm512_set1_epi32(int32_t(base)), _mm512_setr_epi32(0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15));
    __m512 s = _mm512_castsi512_ps(bits);
    __m512 ref = _mm512_div_ps(s, c);
    __m512 q0 = _mm512_mul_ps(s, r);
    __m512 rem = _mm512_fnmadd_ps(q0, c, s);
    __m512 q1 = _mm512_fmadd_ps(rem, r, q0);
    __mmask16 ne = _mm512_cmpneq_epi32_mask(_mm512_castps_si512(ref), _mm512_castps_si512(q1));
    // NaN: compare as "both NaN" ok
    __mmask16 bothnan = _mm512_cmp_ps_mask(ref, ref, _CMP_UNORD_Q) & _mm512_cmp_ps_mask(q1, q1, _CMP_UNORD_Q);
    ne &= ~bothnan;
    if (ne) {
      for (int k = 0; k < 16; ++k) if (ne >> k & 1) {
        uint32_t b = uint32_t(base + k); ++bad;
        if ((b & 0x7FFFFFFFu) > maxabs) maxabs = b & 0x7FFFFFFFu; if (b >= 0x1F800000u && b < 0x7F800000u) { ++bad_in_range; if (!first_bad) first_bad = b; last_bad = b; }
        if (bad < 5) { float x; memcpy(&x, &b, 4); printf("bad %08x %g\n", b, x); }
      }
    }
  }
  printf("largest |bits| mismatching %08x\n", maxabs); printf("decode_step: mismatches %llu, in [2^-64, inf): %llu (first %08x last %08x)\n", (unsigned long long)bad, (unsigned long long)bad_in_range, first_bad, last_bad);
}
