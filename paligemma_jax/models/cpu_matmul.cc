// Few-row float32 x bfloat16 matrix products for decoding on CPU (AVX2 + FMA), as XLA FFI handlers.
//
// Decoding multiplies 1-8 activation rows by every weight matrix once per step, so a step is bound
// by how fast the bf16 weights stream from memory. XLA:CPU has no such kernel: it widens the weights
// to f32 first or runs a GEMM tuned for many rows, and reaches 2-8 GB/s where memory gives ~25.
// These kernels read each weight once, widen 8 values at a time in registers (bf16 is the top half
// of an f32) and accumulate in f32. Letters: M activation rows (any; best <= 8), C contracted, F
// output columns, L leading weight axes (batched matrices, e.g. attention heads).
//
//   PgMatmulNN: y[M, L, F] = x[M, C] . w[layer, L, C, F]  (big_vision layout: contraction first)
//   PgMatmulNNInt8: y[M, L, F] = (x[M, C] . q[layer, L, C, F]) * scale[L, F]  (int8 weights)
//   PgMatmulNT: y[M, F]    = x[M, C] . w[layer, F, C]^T   (the embedding used as the LM head)
//   PgWiden:    y[...]     = f32(w[layer, ...])           (a prefill GEMM's operand, see .py)
//   PgCopyLayer: y[...]    = w[layer, ...]                (the same, where bf16 GEMMs are faster)
//   PgTakeRows: y[N, D]    = table[ids[N], D]             (the embedding lookup; see cpu_matmul.py)
//
// PgMatmulNNInt8 is the same product over weight-only int8 weights (models/quantize.py): one
// scale per output channel factors out of each dot product, so the kernel sums x . q over the
// int8 values (sign-extended and converted 8 at a time: exact in f32) and scales once at the
// end. It streams half the bytes of the bf16 kernel.
//
// The weights may be a stack of layers (a leading axis), read in place at `layer`; a plain matrix
// is a stack of one. A decode loop that sliced the layer out would make XLA copy it first.
//
// Work is split between up to `threads` threads of a persistent pool: NN over the contraction
// (pieces of partial sums, added in a fixed order), NT over output columns.

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "cpu_kernels.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

inline __m256 Widen(const uint16_t* p) {  // 8 bf16 -> 8 f32
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

inline float Widen1(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline __m256 Widen(const int8_t* p) {  // 8 int8 -> 8 f32 (exact)
  __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}

inline float Widen1(int8_t v) { return static_cast<float>(v); }

// Output columns per block. The accumulators (up to 4 x 64 KB) live in L2; wide blocks keep each
// weight row's reads long and sequential (measured at one row on 2 cores: 1024 columns 19 GB/s,
// 4096 29 GB/s, 16384 34 GB/s).
constexpr int64_t kCols = 16384;

// Adds rows [0, R) of x[:, :C] . w[:C, f0:f1] to y[:, f0:f1] (x's rows are x_stride apart, w's
// F). Four weight rows are folded into each pass over the accumulators, so the cache traffic per
// weight stays low; R <= 4. W: bf16 bits (uint16_t) or int8 values.
template <int R, typename W>
void NNBlock(const float* x, int64_t x_stride, int64_t C, const W* w, int64_t F, float* y,
             int64_t y_stride, int64_t f0, int64_t f1) {
  static thread_local std::vector<float> scratch(4 * kCols + 8);  // too big for the stack
  auto* acc = reinterpret_cast<float (*)[kCols]>(
      (reinterpret_cast<uintptr_t>(scratch.data()) + 31) & ~uintptr_t{31});
  const int64_t width = f1 - f0, vec = width / 8 * 8;
  for (int r = 0; r < R; ++r) std::fill(acc[r], acc[r] + width, 0.0f);
  for (int64_t c = 0; c < C; c += 4) {
    const int k = static_cast<int>(std::min<int64_t>(4, C - c));
    const W* wr[4];
    __m256 b[R][4];
    for (int i = 0; i < 4; ++i) {
      wr[i] = w + (c + std::min(i, k - 1)) * F + f0;  // a short tail repeats a row with weight 0
      for (int r = 0; r < R; ++r) b[r][i] = _mm256_set1_ps(i < k ? x[r * x_stride + c + i] : 0.0f);
    }
    int64_t j = 0;
    for (; j < vec; j += 8) {
      __m256 v0 = Widen(wr[0] + j), v1 = Widen(wr[1] + j);
      __m256 v2 = Widen(wr[2] + j), v3 = Widen(wr[3] + j);
      for (int r = 0; r < R; ++r) {
        __m256 a = _mm256_load_ps(acc[r] + j);
        a = _mm256_fmadd_ps(b[r][0], v0, a);
        a = _mm256_fmadd_ps(b[r][1], v1, a);
        a = _mm256_fmadd_ps(b[r][2], v2, a);
        a = _mm256_fmadd_ps(b[r][3], v3, a);
        _mm256_store_ps(acc[r] + j, a);
      }
    }
    for (; j < width; ++j) {
      for (int r = 0; r < R; ++r) {
        for (int i = 0; i < k; ++i) acc[r][j] += x[r * x_stride + c + i] * Widen1(wr[i][j]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    float* out = y + r * y_stride + f0;
    for (int64_t j = 0; j < width; ++j) out[j] += acc[r][j];
  }
}

template <typename W>
void NNRows(const float* x, int64_t x_stride, int64_t M, int64_t C, const W* w, int64_t F,
            float* y, int64_t y_stride, int64_t f0, int64_t f1) {
  // Groups of up to 4 rows, each a pass over the block's weights (C x kCols, larger than the
  // caches). At 5-8 rows the kernel is bound by FMAs, not memory: one 8-row pass (broadcasts
  // spilled from registers) measured slower than two 4-row passes reading the weights twice.
  for (int64_t b = f0; b < f1; b += kCols) {
    const int64_t e = std::min(f1, b + kCols);
    for (int64_t m = 0; m < M; m += 4) {
      const float* xm = x + m * x_stride;
      float* ym = y + m * y_stride;
      switch (std::min<int64_t>(M - m, 4)) {
        case 4: NNBlock<4>(xm, x_stride, C, w, F, ym, y_stride, b, e); break;
        case 3: NNBlock<3>(xm, x_stride, C, w, F, ym, y_stride, b, e); break;
        case 2: NNBlock<2>(xm, x_stride, C, w, F, ym, y_stride, b, e); break;
        default: NNBlock<1>(xm, x_stride, C, w, F, ym, y_stride, b, e);
      }
    }
  }
}

inline float Sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// y[m, f] for rows [m0, m0 + R), columns f in [f0, f1), four weight rows at a time (four
// sequential read streams keep more of memory's bandwidth busy than one or two).
template <int R>
void NTRows(const float* x, int64_t C, const uint16_t* w, float* y, int64_t F, int64_t f0,
            int64_t f1) {
  constexpr int kRows = R <= 2 ? 4 : 2;  // accumulators: kRows * R <= 8 registers
  const int64_t vec = C / 8 * 8;
  int64_t f = f0;
  for (; f + kRows <= f1; f += kRows) {
    const uint16_t* wr[kRows];
    __m256 a[kRows][R];
    for (int i = 0; i < kRows; ++i) {
      wr[i] = w + (f + i) * C;
      for (int r = 0; r < R; ++r) a[i][r] = _mm256_setzero_ps();
    }
    for (int64_t j = 0; j < vec; j += 8) {
      __m256 v[kRows];
      for (int i = 0; i < kRows; ++i) v[i] = Widen(wr[i] + j);
      for (int r = 0; r < R; ++r) {
        __m256 xv = _mm256_loadu_ps(x + r * C + j);
        for (int i = 0; i < kRows; ++i) a[i][r] = _mm256_fmadd_ps(xv, v[i], a[i][r]);
      }
    }
    for (int i = 0; i < kRows; ++i) {
      for (int r = 0; r < R; ++r) {
        float acc = Sum(a[i][r]);
        for (int64_t j = vec; j < C; ++j) acc += x[r * C + j] * Widen1(wr[i][j]);
        y[r * F + f + i] = acc;
      }
    }
  }
  for (; f < f1; ++f) {
    const uint16_t* w0 = w + f * C;
    for (int r = 0; r < R; ++r) {
      float acc = 0.f;
      for (int64_t j = 0; j < C; ++j) acc += x[r * C + j] * Widen1(w0[j]);
      y[r * F + f] = acc;
    }
  }
}

void NTAll(const float* x, int64_t M, int64_t C, const uint16_t* w, float* y, int64_t F,
           int64_t f0, int64_t f1) {
  // Blocks of 32 weight rows outside, row groups inside: later groups read the block from cache.
  for (int64_t b = f0; b < f1; b += 32) {
    const int64_t e = std::min(f1, b + 32);
    for (int64_t m = 0; m < M; m += 4) {
      const float* xm = x + m * C;
      float* ym = y + m * F;
      switch (std::min<int64_t>(M - m, 4)) {
        case 4: NTRows<4>(xm, C, w, ym, F, b, e); break;
        case 3: NTRows<3>(xm, C, w, ym, F, b, e); break;
        case 2: NTRows<2>(xm, C, w, ym, F, b, e); break;
        default: NTRows<1>(xm, C, w, ym, F, b, e);
      }
    }
  }
}

ffi::Error MatmulNN(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::BF16> w,
                    ffi::ResultBuffer<ffi::F32> y, int64_t layer, int64_t threads) {
  auto xd = x.dimensions();
  auto yd = y->dimensions();
  if (xd.size() != 2 || yd.size() != 3 || !InStack(w, layer, yd[1] * xd[1] * yd[2])) {
    return ffi::Error::InvalidArgument("PgMatmulNN wants x[M, C], w[layers, L, C, F], y[M, L, F]");
  }
  const int64_t M = xd[0], C = xd[1], L = yd[1], F = yd[2];
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.typed_data()) + layer * L * C * F;
  SplitContraction(x.typed_data(), M, C, L, F, wp, y->typed_data(), static_cast<int>(threads), 1,
                   [](const float* x, int64_t xs, int64_t m, int64_t c, const uint16_t* w,
                      int64_t f, float* y, int64_t ys) { NNRows(x, xs, m, c, w, f, y, ys, 0, f); });
  return ffi::Error::Success();
}

// As MatmulNN over int8 weights, then y[m, l, f] *= scale[l, f] (scale holds one layer's L * F
// per-output-channel scales; the caller slices a stack's, which are small).
ffi::Error MatmulNNInt8(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::S8> w,
                        ffi::Buffer<ffi::F32> scale, ffi::ResultBuffer<ffi::F32> y, int64_t layer,
                        int64_t threads) {
  auto xd = x.dimensions();
  auto yd = y->dimensions();
  if (xd.size() != 2 || yd.size() != 3 || !InStack(w, layer, yd[1] * xd[1] * yd[2]) ||
      static_cast<int64_t>(scale.element_count()) != yd[1] * yd[2]) {
    return ffi::Error::InvalidArgument(
        "PgMatmulNNInt8 wants x[M, C], q[layers, L, C, F], scale[L, F], y[M, L, F]");
  }
  const int64_t M = xd[0], C = xd[1], L = yd[1], F = yd[2];
  const int8_t* wp = w.typed_data() + layer * L * C * F;
  float* yp = y->typed_data();
  SplitContraction(x.typed_data(), M, C, L, F, wp, yp, static_cast<int>(threads), 1,
                   [](const float* x, int64_t xs, int64_t m, int64_t c, const int8_t* w,
                      int64_t f, float* y, int64_t ys) { NNRows(x, xs, m, c, w, f, y, ys, 0, f); });
  const float* sp = scale.typed_data();
  const int64_t n = L * F, vec = n / 8 * 8;
  for (int64_t m = 0; m < M; ++m) {
    float* row = yp + m * n;
    int64_t i = 0;
    for (; i < vec; i += 8) {
      _mm256_storeu_ps(row + i, _mm256_mul_ps(_mm256_loadu_ps(row + i), _mm256_loadu_ps(sp + i)));
    }
    for (; i < n; ++i) row[i] *= sp[i];
  }
  return ffi::Error::Success();
}

ffi::Error MatmulNT(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::BF16> w,
                    ffi::ResultBuffer<ffi::F32> y, int64_t layer, int64_t threads) {
  auto xd = x.dimensions();
  auto yd = y->dimensions();
  if (xd.size() != 2 || yd.size() != 2 || !InStack(w, layer, yd[1] * xd[1])) {
    return ffi::Error::InvalidArgument("PgMatmulNT wants x[M, C], w[layers, F, C], y[M, F]");
  }
  const int64_t M = xd[0], C = xd[1], F = yd[1];
  const float* xp = x.typed_data();
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.typed_data()) + layer * F * C;
  float* yp = y->typed_data();
  Parallel(F, 64, static_cast<int>(threads),
           [&](int64_t lo, int64_t hi) { NTAll(xp, M, C, wp, yp, F, lo, hi); });
  return ffi::Error::Success();
}

// y = w[layer] as f32. `after` is not read: it orders the call after its producer, so that XLA
// widens a layer's weights when the layer runs rather than all layers' at the start.
ffi::Error WidenLayer(ffi::Buffer<ffi::BF16> w, ffi::AnyBuffer after,
                      ffi::ResultBuffer<ffi::F32> y, int64_t layer, int64_t threads) {
  const int64_t n = static_cast<int64_t>(y->element_count());
  if (!InStack(w, layer, n)) return ffi::Error::InvalidArgument("PgWiden wants w[layers, ...]");
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.typed_data()) + layer * n;
  float* yp = y->typed_data();
  Parallel(n, 1 << 16, static_cast<int>(threads), [&](int64_t lo, int64_t hi) {
    int64_t i = lo;
    for (; i + 8 <= hi; i += 8) _mm256_storeu_ps(yp + i, Widen(wp + i));
    for (; i < hi; ++i) yp[i] = Widen1(wp[i]);
  });
  return ffi::Error::Success();
}

// y = w[layer] in bf16: a prefill GEMM's operand on CPUs whose bf16 GEMM is the fast one, ordered
// after `after` as PgWiden's is (a copy of one layer, made when the layer runs).
ffi::Error CopyLayer(ffi::Buffer<ffi::BF16> w, ffi::AnyBuffer after,
                     ffi::ResultBuffer<ffi::BF16> y, int64_t layer, int64_t threads) {
  const int64_t n = static_cast<int64_t>(y->element_count());
  if (!InStack(w, layer, n)) return ffi::Error::InvalidArgument("PgCopyLayer wants w[layers, ...]");
  const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.typed_data()) + layer * n;
  uint16_t* yp = reinterpret_cast<uint16_t*>(y->typed_data());
  Parallel(n, 1 << 16, static_cast<int>(threads), [&](int64_t lo, int64_t hi) {
    std::memcpy(yp + lo, wp + lo, (hi - lo) * sizeof(uint16_t));
  });
  return ffi::Error::Success();
}

// y[n, :] = table[ids[n], :] for a bf16 table [V, D], as jnp.take's default "fill" mode: ids in
// [-V, 0) count from the end, ids outside [-V, V) give NaN rows.
ffi::Error TakeRows(ffi::Buffer<ffi::BF16> table, ffi::Buffer<ffi::S32> ids,
                    ffi::ResultBuffer<ffi::BF16> y) {
  auto td = table.dimensions();
  if (td.size() != 2) return ffi::Error::InvalidArgument("PgTakeRows wants table[V, D]");
  const int64_t V = td[0], D = td[1], n = static_cast<int64_t>(ids.element_count());
  const uint16_t* tp = reinterpret_cast<const uint16_t*>(table.typed_data());
  const int32_t* ip = ids.typed_data();
  uint16_t* yp = reinterpret_cast<uint16_t*>(y->typed_data());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = ip[i] < 0 ? ip[i] + V : ip[i];  // negative ids count from the end
    if (id >= 0 && id < V) {
      std::memcpy(yp + i * D, tp + id * D, D * sizeof(uint16_t));
    } else {
      std::fill(yp + i * D, yp + (i + 1) * D, uint16_t{0x7FC0});  // bf16 NaN
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PgTakeRows, TakeRows,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::BF16>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(PgMatmulNN, MatmulNN,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("layer")
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(PgMatmulNNInt8, MatmulNNInt8,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("layer")
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(PgMatmulNT, MatmulNT,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("layer")
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(PgWiden, WidenLayer,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("layer")
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(PgCopyLayer, CopyLayer,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::BF16>>()
                                  .Attr<int64_t>("layer")
                                  .Attr<int64_t>("threads"));
