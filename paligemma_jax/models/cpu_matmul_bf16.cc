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

// Adds rows [0, R) of x[:, :C] . w[:C, f0:f1] to y (x's rows x_stride apart, w's F, y's y_stride).
// Each pass over a block's accumulators folds in P pairs of weight rows, the R x 2 accumulators
// of 32 columns held in registers through the pass and the activation pairs broadcast from
// memory. Past 4 rows the vdpbf16ps work per accumulator load and store bounds the pass, and 8
// pairs measured ~10% faster than 4 at 8 rows (2 threads, 2048 x 16384 and 16384 x 2048, from
// memory); at 1-4 rows, bound by memory, 4 pairs (8 read streams) were as fast or faster.
template <int R>
void NNBlock(const uint16_t* x, int64_t x_stride, int64_t C, const uint16_t* w, int64_t F,
             float* y, int64_t y_stride, int64_t f0, int64_t f1) {
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
      _mm512_storeu_ps(out + j, _mm512_add_ps(_mm512_loadu_ps(out + j),
                                              _mm512_permutex2var_ps(lo, first, hi)));
      _mm512_storeu_ps(out + j + 16, _mm512_add_ps(_mm512_loadu_ps(out + j + 16),
                                                   _mm512_permutex2var_ps(lo, second, hi)));
    }
    for (int64_t j = vec; j < width; ++j) out[j] += acc[r][j];
  }
}

void NNRows(const uint16_t* x, int64_t x_stride, int64_t M, int64_t C, const uint16_t* w,
            int64_t F, float* y, int64_t y_stride) {
  for (int64_t b = 0; b < F; b += kCols) {
    const int64_t e = std::min(F, b + kCols);
    for (int64_t m = 0; m < M; m += 8) {  // one pass over the weights for up to 8 rows
      const uint16_t* xm = x + m * x_stride;
      float* ym = y + m * y_stride;
      switch (std::min<int64_t>(M - m, 8)) {
        case 8: NNBlock<8>(xm, x_stride, C, w, F, ym, y_stride, b, e); break;
        case 7: NNBlock<7>(xm, x_stride, C, w, F, ym, y_stride, b, e); break;
        case 6: NNBlock<6>(xm, x_stride, C, w, F, ym, y_stride, b, e); break;
        case 5: NNBlock<5>(xm, x_stride, C, w, F, ym, y_stride, b, e); break;
        case 4: NNBlock<4>(xm, x_stride, C, w, F, ym, y_stride, b, e); break;
        case 3: NNBlock<3>(xm, x_stride, C, w, F, ym, y_stride, b, e); break;
        case 2: NNBlock<2>(xm, x_stride, C, w, F, ym, y_stride, b, e); break;
        default: NNBlock<1>(xm, x_stride, C, w, F, ym, y_stride, b, e);
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
#pragma GCC unroll 4
  for (int i = 0; i < K; ++i) {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) y[r * F + i] = _mm512_reduce_add_ps(a[i][r]);
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
  // Pieces of an even number of rows, so that a weight-row pair never spans two pieces.
  SplitContraction(xp, M, C, L, F, wp, y->typed_data(), static_cast<int>(threads), 2, NNRows);
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
