// Few-row bfloat16 x bfloat16 matrix products for decoding on CPUs with AVX-512 BF16 units
// (vdpbf16ps), as XLA FFI handlers. The same products as cpu_matmul.cc's AVX2 kernels, whose
// 5-8-row passes are bound by f32 FMAs; here each instruction multiplies pairs of bf16 values
// (exact in f32) and adds both products into an f32 lane, so one instruction does the work of four
// AVX2 FMAs and the activation rows are read as the bf16 values they already are (the model's
// bf16 activations: no rounding). Compiled with -mavx512f -mavx512bw -mavx512bf16 and loaded only
// on CPUs that have them (see cpu_path.py). Letters as in cpu_matmul.cc.
//
//   PgMatmulNNBf16: y[M, L, F] = x[M, C] . w[layer, L, C, F]  (contraction first)
//   PgMatmulNTBf16: y[M, F]    = x[M, C] . w[layer, F, C]^T   (the LM head)
//   PgGemmBf16:     y[M, L, F] = x[M, C] . w[layer, L, C, F]  (the same for many rows: a prefill)
//
// vdpbf16ps pairs neighbouring elements. For NT (rows of w run along C) the pairs are there; for
// NN two weight rows c, c + 1 are interleaved with unpacklo/hi, which leaves the 32 output columns
// of a vector pair in a lane-permuted order: the accumulators keep that order and are put back in
// column order when they are added to the output.

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_kernels.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

inline uint32_t Pair(const uint16_t* x, int64_t c, int64_t n) {  // bf16 x[c], x[c + 1] as one dword
  const uint32_t lo = c < n ? x[c] : 0, hi = c + 1 < n ? x[c + 1] : 0;
  return lo | (hi << 16);
}

inline float Widen1(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Output columns per block: R x kCols f32 accumulators stay in L2 while 8 weight rows stream.
// Measured on one core of an AVX-512-BF16 EPYC, 2048 x 16384 weights, streamed from memory, against
// 4096 / 8192 columns: the widest blocks were the fastest at 1, 4 and 8 rows (a software prefetch
// of the next rows was slower).
constexpr int64_t kCols = 16384;

// The narrowest column block a thread takes of a wide NN product (see MatmulNN).
constexpr int64_t kMinCols = 4096;

// Adds rows [0, R) of x[:, :C] . w[:C, f0:f1] to y (x's rows x_stride apart, w's F, y's y_stride),
// or stores them there if not `add`.
// Each pass over a block's accumulators folds in P pairs of weight rows, the R x 2 accumulators
// of 32 columns held in registers through the pass and the activation pairs broadcast from
// memory. Past 4 rows the vdpbf16ps work per accumulator load and store bounds the pass, and 8
// pairs measured ~10% faster than 4 at 8 rows (2 threads, 2048 x 16384 and 16384 x 2048, from
// memory); at 1-4 rows, bound by memory, 4 pairs (8 read streams) were as fast or faster.
template <int R>
void NNBlock(const uint16_t* x, int64_t x_stride, int64_t C, const uint16_t* w, int64_t F,
             float* y, int64_t y_stride, int64_t f0, int64_t f1, bool add = true) {
  constexpr int P = R > 4 ? 8 : 4;
  static thread_local std::vector<float> scratch(8 * kCols + 16);
  static thread_local std::vector<uint16_t> zeros(kCols + 32, 0);
  auto* acc = reinterpret_cast<float (*)[kCols]>(
      (reinterpret_cast<uintptr_t>(scratch.data()) + 63) & ~uintptr_t{63});
  const int64_t width = f1 - f0, vec = width / 32 * 32;
  for (int r = 0; r < R; ++r) std::fill(acc[r], acc[r] + width, 0.0f);
  for (int64_t c = 0; c < C; c += 2 * P) {
    const uint16_t* wr[2 * P];
    uint32_t xp[P][R];
    for (int i = 0; i < 2 * P; ++i) wr[i] = c + i < C ? w + (c + i) * F + f0 : zeros.data();
    for (int p = 0; p < P; ++p) {
      for (int r = 0; r < R; ++r) xp[p][r] = Pair(x + r * x_stride, c + 2 * p, C);
    }
    for (int64_t j = 0; j < vec; j += 32) {
      __m512 s[R][2];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        s[r][0] = _mm512_load_ps(acc[r] + j);
        s[r][1] = _mm512_load_ps(acc[r] + j + 16);
      }
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) {
        const __m512i a = _mm512_loadu_si512(wr[2 * p] + j);
        const __m512i b = _mm512_loadu_si512(wr[2 * p + 1] + j);
        const __m512bh lo = (__m512bh)_mm512_unpacklo_epi16(a, b);  // columns {0-3, 8-11, ...}
        const __m512bh hi = (__m512bh)_mm512_unpackhi_epi16(a, b);  // columns {4-7, 12-15, ...}
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const __m512bh xv = (__m512bh)_mm512_set1_epi32(static_cast<int>(xp[p][r]));
          s[r][0] = _mm512_dpbf16_ps(s[r][0], lo, xv);
          s[r][1] = _mm512_dpbf16_ps(s[r][1], hi, xv);
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        _mm512_store_ps(acc[r] + j, s[r][0]);
        _mm512_store_ps(acc[r] + j + 16, s[r][1]);
      }
    }
    for (int64_t j = vec; j < width; ++j) {  // columns past the last 32: in order, in f32
      for (int r = 0; r < R; ++r) {
        float sum = acc[r][j];
        for (int i = 0; i < 2 * P && c + i < C; ++i) {
          sum += Widen1(x[r * x_stride + c + i]) * Widen1(wr[i][j]);
        }
        acc[r][j] = sum;
      }
    }
  }
  // Back to column order: lo's lane q holds columns 8q..8q+3 and hi's 8q+4..8q+7.
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second =
      _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  for (int r = 0; r < R; ++r) {
    float* out = y + r * y_stride + f0;
    for (int64_t j = 0; j < vec; j += 32) {
      const __m512 lo = _mm512_load_ps(acc[r] + j), hi = _mm512_load_ps(acc[r] + j + 16);
      const __m512 a = _mm512_permutex2var_ps(lo, first, hi);
      const __m512 b = _mm512_permutex2var_ps(lo, second, hi);
      _mm512_storeu_ps(out + j, add ? _mm512_add_ps(_mm512_loadu_ps(out + j), a) : a);
      _mm512_storeu_ps(out + j + 16, add ? _mm512_add_ps(_mm512_loadu_ps(out + j + 16), b) : b);
    }
    for (int64_t j = vec; j < width; ++j) out[j] = (add ? out[j] : 0.0f) + acc[r][j];
  }
}

// Adds x[:M, :C] . w[:C, f0:f1] to y (or stores it there, if not `add`).
void NNRows(const uint16_t* x, int64_t x_stride, int64_t M, int64_t C, const uint16_t* w,
            int64_t F, float* y, int64_t y_stride, int64_t f0, int64_t f1, bool add) {
  for (int64_t b = f0; b < f1; b += kCols) {
    const int64_t e = std::min(f1, b + kCols);
    for (int64_t m = 0; m < M; m += 8) {  // one pass over the weights for up to 8 rows
      const uint16_t* xm = x + m * x_stride;
      float* ym = y + m * y_stride;
      switch (std::min<int64_t>(M - m, 8)) {
        case 8: NNBlock<8>(xm, x_stride, C, w, F, ym, y_stride, b, e, add); break;
        case 7: NNBlock<7>(xm, x_stride, C, w, F, ym, y_stride, b, e, add); break;
        case 6: NNBlock<6>(xm, x_stride, C, w, F, ym, y_stride, b, e, add); break;
        case 5: NNBlock<5>(xm, x_stride, C, w, F, ym, y_stride, b, e, add); break;
        case 4: NNBlock<4>(xm, x_stride, C, w, F, ym, y_stride, b, e, add); break;
        case 3: NNBlock<3>(xm, x_stride, C, w, F, ym, y_stride, b, e, add); break;
        case 2: NNBlock<2>(xm, x_stride, C, w, F, ym, y_stride, b, e, add); break;
        default: NNBlock<1>(xm, x_stride, C, w, F, ym, y_stride, b, e, add);
      }
    }
  }
}

// y[r, i] (rows F apart) for R activation rows x (C apart) and K weight rows w (C apart), 32 of C
// per step (a masked load zero-fills the tail of C). The K x R accumulators must stay in
// registers: a first version stepped through a lambda over arrays, and GCC kept them on the stack
// (a store after every vdpbf16ps: 75 GFLOP/s of the ~230 one core does, measured on L2-resident
// weights; 200 this way). `ahead`, if any, is prefetched into L2 a line per weight row per step.
template <int R, int K>
inline void NTTile(const uint16_t* x, int64_t C, const uint16_t* w, float* y, int64_t F,
                   const uint16_t* ahead) {
  __m512 a[K][R];
#pragma GCC unroll 4
  for (int i = 0; i < K; ++i) {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) a[i][r] = _mm512_setzero_ps();
  }
  auto step = [&](int64_t j, __mmask32 m) __attribute__((always_inline)) {
    __m512i v[K];
#pragma GCC unroll 4
    for (int i = 0; i < K; ++i) v[i] = _mm512_maskz_loadu_epi16(m, w + i * C + j);
    if (ahead != nullptr) {
#pragma GCC unroll 4
      for (int i = 0; i < K; ++i) _mm_prefetch(reinterpret_cast<const char*>(ahead + i * C + j),
                                               _MM_HINT_T1);
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m512i xv = _mm512_maskz_loadu_epi16(m, x + r * C + j);
#pragma GCC unroll 4
      for (int i = 0; i < K; ++i) {
        a[i][r] = _mm512_dpbf16_ps(a[i][r], (__m512bh)v[i], (__m512bh)xv);
      }
    }
  };
  const int64_t vec = C / 32 * 32;
  for (int64_t j = 0; j < vec; j += 32) step(j, ~__mmask32{0});
  if (vec < C) step(vec, static_cast<__mmask32>((uint64_t{1} << (C - vec)) - 1));
  if constexpr (K == 4) {
    // Each row's 4 sums at once, as a tree: 13 instructions where 4 _mm512_reduce_add_ps took
    // ~32 (a 4 x 4 tile at C = 2048: 52 instead of ~128, next to 1,024 vdpbf16ps).
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(a[0][r], a[1][r]),
                                      _mm512_unpackhi_ps(a[0][r], a[1][r]));
      const __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(a[2][r], a[3][r]),
                                      _mm512_unpackhi_ps(a[2][r], a[3][r]));
      const __m512d d0 = _mm512_castps_pd(t0), d1 = _mm512_castps_pd(t1);
      const __m512d u = _mm512_castps_pd(_mm512_add_ps(
          _mm512_castpd_ps(_mm512_unpacklo_pd(d0, d1)), _mm512_castpd_ps(_mm512_unpackhi_pd(d0, d1))));
      const __m256 v = _mm256_add_ps(_mm256_castpd_ps(_mm512_castpd512_pd256(u)),
                                     _mm256_castpd_ps(_mm512_extractf64x4_pd(u, 1)));
      _mm_storeu_ps(y + r * F, _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)));
    }
  } else {
#pragma GCC unroll 4
    for (int i = 0; i < K; ++i) {
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) y[r * F + i] = _mm512_reduce_add_ps(a[i][r]);
    }
  }
}

// y[m, f] for rows [0, R) and columns [f0, f1): 4 weight rows at a time (16 accumulators at 4
// rows), then one at a time. `ahead` (or null) is what to prefetch for the block's weights.
template <int R>
void NTRows(const uint16_t* x, int64_t C, const uint16_t* w, float* y, int64_t F, int64_t f0,
            int64_t f1, const uint16_t* ahead) {
  int64_t f = f0;
  for (; f + 4 <= f1; f += 4) {
    NTTile<R, 4>(x, C, w + f * C, y + f, F, ahead == nullptr ? nullptr : ahead + (f - f0) * C);
  }
  for (; f < f1; ++f) NTTile<R, 1>(x, C, w + f * C, y + f, F, nullptr);
}

void NTAll(const uint16_t* x, int64_t M, int64_t C, const uint16_t* w, float* y, int64_t F,
           int64_t f0, int64_t f1) {
  // Blocks of 32 weight rows outside, groups of 4 activation rows inside: later groups read the
  // block from L2. Past 4 rows the first group prefetches the block 2 ahead, so that memory keeps
  // streaming while the later groups compute. Measured at 8 rows on the 257,216 x 2048 head, 2
  // threads: 44 ms without, 40 one block ahead, 37 two (36 ms is the 1-row time: memory's). One
  // pass of 8 rows (x read from L1 8 times per weight vector) reached 125-150 GFLOP/s per core in
  // L2 against 200 for two groups of 4.
  constexpr int64_t kBlock = 32, kAhead = 2;
  for (int64_t b = f0; b < f1; b += kBlock) {
    const int64_t e = std::min(f1, b + kBlock);
    const uint16_t* ahead = M > 4 && e + kAhead * kBlock <= f1 ? w + (b + kAhead * kBlock) * C
                                                                 : nullptr;
    for (int64_t m = 0; m < M; m += 4) {
      const uint16_t* xm = x + m * C;
      float* ym = y + m * F;
      const uint16_t* pf = m == 0 ? ahead : nullptr;
      switch (std::min<int64_t>(M - m, 4)) {
        case 4: NTRows<4>(xm, C, w, ym, F, b, e, pf); break;
        case 3: NTRows<3>(xm, C, w, ym, F, b, e, pf); break;
        case 2: NTRows<2>(xm, C, w, ym, F, b, e, pf); break;
        default: NTRows<1>(xm, C, w, ym, F, b, e, pf);
      }
    }
  }
}

// -- prefill GEMM --------------------------------------------------------------------------------
//
// y[M, F] = x[M, C] . w[C, F] for many rows M (a prefill's products), w one layer of its stack read
// in place. Blocked as the usual GEMM is: for KC x NC blocks of w, each thread packs the block
// into its own buffer (vdpbf16ps pairs: row pairs c, c + 1 interleaved per column, in panels of
// kNR columns) that stays in L2 while every kMR-row group of x runs through it; a register tile of
// kMR x kNR f32 sums is loaded once per block, takes KC products per element, and is stored back.
// x needs no packing: its pairs along C are adjacent and are broadcast straight from memory.
// Threads take blocks of output columns (and, for narrow outputs, groups of rows).

constexpr int kMR = 6, kNR = 64;  // 24 accumulators + 4 weight vectors of the 32 registers
// A block of 512 x 512 weights is 512 KB packed, half the L2. 512 rows rather than 256 halve how
// often each tile's sums are loaded and stored again (at 2176 rows a thread's 2176 x 512 f32
// outputs, 4.5 MB, went through L3 or memory once per block of rows); measured on a 2-core EPYC,
// best of 4 alternating rounds: four 272 x 2048 x 16384 products 200 -> 185 ms, one 2176 x 16384
// x 2048 376 -> 346.
constexpr int64_t kKC = 512, kNC = 512;

// Packs w[k0:k0 + kc, n0:n0 + nc] (row stride F) into panels of kNR columns: panel p holds, for
// each pair of rows (2i, 2i + 1), kNR dwords (w[2i, col], w[2i + 1, col]) in column order. Rows
// and columns past the matrix are zeros.
void PackPanels(const uint16_t* w, int64_t F, int64_t kc, int64_t nc, uint16_t* out) {
  const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                      39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
  const int64_t pairs = (kc + 1) / 2;
  for (int64_t i = 0; i < pairs; ++i) {  // along each pair of rows: contiguous reads
    for (int64_t p = 0; p * kNR < nc; ++p) {
      const uint16_t* r0 = w + 2 * i * F + p * kNR;
      const uint16_t* r1 = r0 + F;
      uint16_t* o = out + (p * pairs + i) * 2 * kNR;
      for (int h = 0; h < kNR; h += 32) {
        const int64_t left = nc - p * kNR - h;
        const __mmask32 m = left >= 32 ? ~__mmask32{0}
                            : left <= 0 ? 0 : static_cast<__mmask32>((uint64_t{1} << left) - 1);
        const __m512i a = _mm512_maskz_loadu_epi16(m, r0 + h);
        const __m512i b = 2 * i + 1 < kc ? _mm512_maskz_loadu_epi16(m, r1 + h) : _mm512_setzero_si512();
        _mm512_store_si512(o + 2 * h, _mm512_permutex2var_epi16(a, lo, b));
        _mm512_store_si512(o + 2 * h + 32, _mm512_permutex2var_epi16(a, hi, b));
      }
    }
  }
}

// y[0:R, 0:cols] (+)= x[0:R, 0:kc] . panel (cols <= kNR): the tile's sums stay in registers.
template <int R>
void GemmTile(const uint16_t* x, int64_t x_stride, int64_t kc, const uint16_t* panel, float* y,
              int64_t y_stride, int64_t cols, bool add) {
  __m512 acc[R][4];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
  }
  const int64_t pairs = kc / 2;
  for (int64_t i = 0; i < pairs; ++i) {
    const uint16_t* b = panel + i * 2 * kNR;
    const __m512bh b0 = (__m512bh)_mm512_load_si512(b), b1 = (__m512bh)_mm512_load_si512(b + 32);
    const __m512bh b2 = (__m512bh)_mm512_load_si512(b + 64);
    const __m512bh b3 = (__m512bh)_mm512_load_si512(b + 96);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      int32_t xp;
      std::memcpy(&xp, x + r * x_stride + 2 * i, sizeof xp);
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(xp);
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], b0, xv);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], b1, xv);
      acc[r][2] = _mm512_dpbf16_ps(acc[r][2], b2, xv);
      acc[r][3] = _mm512_dpbf16_ps(acc[r][3], b3, xv);
    }
  }
  if (kc % 2) {  // the last row alone (its pair's partner is a zero row of the panel)
    const uint16_t* b = panel + pairs * 2 * kNR;
    __m512bh bv[4];
    for (int j = 0; j < 4; ++j) bv[j] = (__m512bh)_mm512_load_si512(b + 32 * j);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(x[r * x_stride + kc - 1]);
      for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], bv[j], xv);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const int64_t left = cols - 16 * j;
      if (left <= 0) break;
      const __mmask16 m = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
      float* out = y + r * y_stride + 16 * j;
      const __m512 v = add ? _mm512_add_ps(acc[r][j], _mm512_maskz_loadu_ps(m, out)) : acc[r][j];
      _mm512_mask_storeu_ps(out, m, v);
    }
  }
}

// Rows [m0, m1) and columns [n0, n1) of y[M, F] = x[M, C] . w[C, F], packing into `buffer`. While
// a block's tiles run, the next block's weights are prefetched into L2 a few lines per tile: the
// packing then reads them from cache instead of waiting on memory.
void GemmBlock(const uint16_t* x, int64_t C, const uint16_t* w, int64_t F, float* y,
               int64_t y_stride, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
               uint16_t* buffer) {
  const int64_t nc = n1 - n0, panels = (nc + kNR - 1) / kNR;
  const int64_t line_cols = 32, lines_per_row = (nc + line_cols - 1) / line_cols;
  const int64_t tiles = (m1 - m0 + kMR - 1) / kMR * panels;
  for (int64_t k0 = 0; k0 < C; k0 += kKC) {
    const int64_t kc = std::min(kKC, C - k0), pairs = (kc + 1) / 2;
    PackPanels(w + k0 * F + n0, F, kc, nc, buffer);
    const int64_t next_rows = std::clamp<int64_t>(C - k0 - kKC, 0, kKC);
    const int64_t lines = next_rows * lines_per_row;
    const uint16_t* next = w + (k0 + kKC) * F + n0;
    int64_t tile = 0;
    for (int64_t m = m0; m < m1; m += kMR) {
      const uint16_t* xm = x + m * C + k0;
      for (int64_t n = n0; n < n1; n += kNR, ++tile) {
        for (int64_t i = tile * lines / tiles, e = (tile + 1) * lines / tiles; i < e; ++i) {
          _mm_prefetch(reinterpret_cast<const char*>(next + i / lines_per_row * F
                                                     + i % lines_per_row * line_cols),
                       _MM_HINT_T1);
        }
        const uint16_t* panel = buffer + (n - n0) / kNR * pairs * 2 * kNR;
        float* ym = y + m * y_stride + n;
        const int64_t cols = std::min<int64_t>(kNR, n1 - n);
        switch (std::min<int64_t>(m1 - m, kMR)) {
          case 6: GemmTile<6>(xm, C, kc, panel, ym, y_stride, cols, k0 > 0); break;
          case 5: GemmTile<5>(xm, C, kc, panel, ym, y_stride, cols, k0 > 0); break;
          case 4: GemmTile<4>(xm, C, kc, panel, ym, y_stride, cols, k0 > 0); break;
          case 3: GemmTile<3>(xm, C, kc, panel, ym, y_stride, cols, k0 > 0); break;
          case 2: GemmTile<2>(xm, C, kc, panel, ym, y_stride, cols, k0 > 0); break;
          default: GemmTile<1>(xm, C, kc, panel, ym, y_stride, cols, k0 > 0);
        }
      }
    }
  }
}

ffi::Error Gemm(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w, ffi::ResultBuffer<ffi::F32> y,
                int64_t layer, int64_t threads) {
  auto xd = x.dimensions();
  auto yd = y->dimensions();
  if (xd.size() != 2 || yd.size() != 3 || !InStack(w, layer, yd[1] * xd[1] * yd[2])) {
    return ffi::Error::InvalidArgument("PgGemmBf16 wants x[M, C], w[layers, L, C, F], y[M, L, F]");
  }
  const int64_t M = xd[0], C = xd[1], L = yd[1], F = yd[2];
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(x.typed_data());
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.typed_data()) + layer * L * C * F;
  float* yp = y->typed_data();
  // Work items: (matrix l, column block, row group). Column blocks of at most kNC (whole panels),
  // as many as a multiple of the threads where that keeps them whole panels, so that the threads
  // end together; rows are split (in whole tiles) only where there are fewer than 2 blocks per
  // thread, since each item packs its own copy of its blocks.
  const int64_t t = std::max<int64_t>(1, threads), all_panels = (F + kNR - 1) / kNR;
  int64_t blocks = (F + kNC - 1) / kNC;
  blocks = std::min(all_panels, (blocks + t - 1) / t * t);
  const int64_t nc = (all_panels + blocks - 1) / blocks * kNR;
  blocks = (F + nc - 1) / nc;
  const int64_t splits = std::clamp<int64_t>((2 * t + L * blocks - 1) / (L * blocks), 1,
                                             (M + kMR - 1) / kMR);
  const int64_t rows = ((M + splits - 1) / splits + kMR - 1) / kMR * kMR;
  Parallel(L * blocks * splits, 1, static_cast<int>(t), [&](int64_t lo, int64_t hi) {
    static thread_local std::vector<uint16_t> storage;
    const size_t want = static_cast<size_t>((kKC + 1) / 2 * 2 * kNC + 32);
    if (storage.size() < want) storage.resize(want);
    auto* buffer = reinterpret_cast<uint16_t*>(
        (reinterpret_cast<uintptr_t>(storage.data()) + 63) & ~uintptr_t{63});
    for (int64_t item = lo; item < hi; ++item) {
      const int64_t l = item / (blocks * splits), b = item / splits % blocks, s = item % splits;
      const int64_t m0 = s * rows, m1 = std::min(M, m0 + rows);
      if (m0 < m1) {
        GemmBlock(xp, C, wp + l * C * F, F, yp + l * F, L * F, m0, m1, b * nc,
                  std::min(F, (b + 1) * nc), buffer);
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error MatmulNN(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w,
                    ffi::ResultBuffer<ffi::F32> y, int64_t layer, int64_t threads) {
  auto xd = x.dimensions();
  auto yd = y->dimensions();
  if (xd.size() != 2 || yd.size() != 3 || !InStack(w, layer, yd[1] * xd[1] * yd[2])) {
    return ffi::Error::InvalidArgument(
        "PgMatmulNNBf16 wants x[M, C], w[layers, L, C, F], y[M, L, F]");
  }
  const int64_t M = xd[0], C = xd[1], L = yd[1], F = yd[2];
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(x.typed_data());
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.typed_data()) + layer * L * C * F;
  float* yp = y->typed_data();
  const int64_t t = std::max<int64_t>(1, threads);
  if (M > 4 && F >= 2 * kMinCols) {
    // Wide outputs (gate, up) past 4 rows: threads take blocks of whole columns, each reading its
    // columns of every weight row and storing its own outputs, so no partial sums are written,
    // read back and added (8 rows x 16384 columns: 8 pieces of 0.5 MB), and each block's
    // accumulators take a quarter of the L2 they took. Blocks halve until there are 4 per
    // thread, but stay at least kMinCols wide (long runs of each row). Four [2048, 16384]
    // products at 8 rows, 2 threads of a shared 2-core EPYC, best of 6 alternating rounds: 19.4
    // -> 14.4 ms (14.9 with 2048-column blocks). At 1 row, bound by memory, the contraction
    // split's whole rows read faster: 7.6 ms against 8.3 (9.8 with 2048-column blocks).
    int64_t blocks = 1;
    while (L * blocks < 4 * t && F / (2 * blocks) >= kMinCols) blocks *= 2;
    const int64_t width = (F / blocks + 31) / 32 * 32;
    blocks = (F + width - 1) / width;
    Parallel(L * blocks, 1, static_cast<int>(t), [&](int64_t lo, int64_t hi) {
      for (int64_t item = lo; item < hi; ++item) {
        const int64_t l = item / blocks, f0 = item % blocks * width;
        NNRows(xp, C, M, C, wp + l * C * F, F, yp + l * F, L * F, f0, std::min(F, f0 + width),
               false);
      }
    });
    return ffi::Error::Success();
  }
  // Narrow outputs (down, attention out): the contraction is split instead (see
  // SplitContraction), in pieces of an even number of rows, so that a weight-row pair never
  // spans two pieces.
  SplitContraction(xp, M, C, L, F, wp, yp, static_cast<int>(t), 2,
                   [](const uint16_t* x, int64_t xs, int64_t m, int64_t c, const uint16_t* w,
                      int64_t f, float* y, int64_t ys) {
                     NNRows(x, xs, m, c, w, f, y, ys, 0, f, true);
                   });
  return ffi::Error::Success();
}

ffi::Error MatmulNT(ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w,
                    ffi::ResultBuffer<ffi::F32> y, int64_t layer, int64_t threads) {
  auto xd = x.dimensions();
  auto yd = y->dimensions();
  if (xd.size() != 2 || yd.size() != 2 || !InStack(w, layer, yd[1] * xd[1])) {
    return ffi::Error::InvalidArgument("PgMatmulNTBf16 wants x[M, C], w[layers, F, C], y[M, F]");
  }
  const int64_t M = xd[0], C = xd[1], F = yd[1];
  const uint16_t* xp = reinterpret_cast<const uint16_t*>(x.typed_data());
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.typed_data()) + layer * F * C;
  float* yp = y->typed_data();
  Parallel(F, 64, static_cast<int>(threads),
           [&](int64_t lo, int64_t hi) { NTAll(xp, M, C, wp, yp, F, lo, hi); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PgMatmulNNBf16, MatmulNN,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("layer")
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(PgMatmulNTBf16, MatmulNT,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("layer")
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(PgGemmBf16, Gemm,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("layer")
                                  .Attr<int64_t>("threads"));
