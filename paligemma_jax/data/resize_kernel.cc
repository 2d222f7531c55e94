// big_vision's bilinear resize of uint8 images, in TF's float32 arithmetic, for resize_kernel.py.
//
// Both functions end as big_vision does: clip to [0, 255], truncate to uint8. Each output value
// gets the same float32 operations, in the same order, as TensorFlow's CPU kernels, so the
// pixels are TF's bit for bit; compile with -ffp-contract=off (a fused multiply-add rounds
// once where TF rounds twice). They are called through ctypes, which releases the GIL.
//
// PgResizeBilinear: `tf.image.resize(..., "bilinear")` (ResizeBilinear, half-pixel centres).
//   The taps (source rows, flat source offsets, float32 fractions) come from the caller,
//   computed as TF computes them. Per output value, as TF:
//     top = tl + (tr - tl) * fx;  bottom = bl + (br - bl) * fx;  out = top + (bottom - top) * fy
//   A source row's x-lerped values are the same for every output row that reads it, so they
//   are computed once per source row and kept for the next output row (upsampling reads each
//   source row for about scale output rows).
// PgTriangleSpans + PgResizeAntialiased: `tf.image.resize(..., "bilinear", antialias=True)`
//   (ScaleAndTranslate with the triangle kernel): spans of normalised weights per axis, then
//   rows gathered into a float32 [out_h, in_w, C] intermediate, then columns, summing
//   `w * value` tap by tap from zero, as TF's GatherRows / GatherColumns.
//
// SSE2 (any x86-64) runs the same operations on 4 lanes: a 3- or 4-channel pixel per vector
// where pixels are gathered, 16 values per step along rows; other CPUs run the scalar loops.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

namespace {

inline uint8_t ClipTruncate(float v) {
  // tf.clip_by_value(v, 0, 255) then the cast to uint8 (truncation toward zero).
  return static_cast<uint8_t>(std::min(std::max(v, 0.0f), 255.0f));
}

// One source row lerped along x: values[j] = lo + (hi - lo) * frac[j], j < n = pixels * C.
// `safe_bytes`: how many bytes from `row` may be read (the vector path reads 4 bytes per pixel,
// one past a 3-channel pixel); `values` has room for one float past n.
inline void LerpRow(const uint8_t* row, int64_t safe_bytes, int64_t channels,
                    const int64_t* left, const int64_t* right, const float* frac, int64_t n,
                    float* values) {
  int64_t j = 0;
#ifdef __SSE2__
  if (channels == 3 || channels == 4) {
    // A pixel's channels in the lanes of one vector (the fourth lane of a 3-channel pixel is
    // the next pixel's first value, overwritten by the next store): the same float operations
    // per value as the scalar loop, C at a time.
    const __m128i zero = _mm_setzero_si128();
    for (; j < n && right[j] + 4 <= safe_bytes; j += channels) {
      int32_t lo_bytes, hi_bytes;
      std::memcpy(&lo_bytes, row + left[j], 4);
      std::memcpy(&hi_bytes, row + right[j], 4);
      const __m128 lo = _mm_cvtepi32_ps(_mm_unpacklo_epi16(
          _mm_unpacklo_epi8(_mm_cvtsi32_si128(lo_bytes), zero), zero));
      const __m128 hi = _mm_cvtepi32_ps(_mm_unpacklo_epi16(
          _mm_unpacklo_epi8(_mm_cvtsi32_si128(hi_bytes), zero), zero));
      const __m128 f = _mm_set1_ps(frac[j]);  // one fraction per pixel
      _mm_storeu_ps(values + j, _mm_add_ps(lo, _mm_mul_ps(_mm_sub_ps(hi, lo), f)));
    }
  }
#endif
  for (; j < n; ++j) {
    const float lo = row[left[j]];
    const float hi = row[right[j]];
    values[j] = lo + (hi - lo) * frac[j];
  }
}

// out[j] = clip-and-truncate(top[j] + (bottom[j] - top[j]) * fy), j < n.
inline void LerpRows(const float* top, const float* bottom, float fy, int64_t n, uint8_t* out) {
  int64_t j = 0;
#ifdef __SSE2__
  const __m128 f = _mm_set1_ps(fy), lo = _mm_setzero_ps(), hi = _mm_set1_ps(255.0f);
  for (; j + 16 <= n; j += 16) {
    __m128i quarter[4];
    for (int k = 0; k < 4; ++k) {
      const __m128 t = _mm_loadu_ps(top + j + 4 * k), b = _mm_loadu_ps(bottom + j + 4 * k);
      const __m128 v = _mm_add_ps(t, _mm_mul_ps(_mm_sub_ps(b, t), f));
      quarter[k] = _mm_cvttps_epi32(_mm_min_ps(_mm_max_ps(v, lo), hi));
    }
    const __m128i words = _mm_packs_epi32(quarter[0], quarter[1]);
    const __m128i words2 = _mm_packs_epi32(quarter[2], quarter[3]);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), _mm_packus_epi16(words, words2));
  }
#endif
  for (; j < n; ++j) out[j] = ClipTruncate(top[j] + (bottom[j] - top[j]) * fy);
}

// acc[j] = sum over k < taps, in order, of w[k] * rows[k * stride + j], from 0 (GatherRows).
inline void SumRows(const uint8_t* rows, int64_t stride, const float* w, int taps, int64_t n,
                    float* acc) {
  int64_t j = 0;
#ifdef __SSE2__
  const __m128i zero = _mm_setzero_si128();
  for (; j + 16 <= n; j += 16) {
    __m128 sum[4] = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()};
    for (int k = 0; k < taps; ++k) {
      const __m128 wk = _mm_set1_ps(w[k]);
      const uint8_t* at = rows + k * stride + j;
      const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(at));
      const __m128i lo = _mm_unpacklo_epi8(bytes, zero), hi = _mm_unpackhi_epi8(bytes, zero);
      const __m128i ints[4] = {_mm_unpacklo_epi16(lo, zero), _mm_unpackhi_epi16(lo, zero),
                               _mm_unpacklo_epi16(hi, zero), _mm_unpackhi_epi16(hi, zero)};
      for (int q = 0; q < 4; ++q) {
        sum[q] = _mm_add_ps(sum[q], _mm_mul_ps(wk, _mm_cvtepi32_ps(ints[q])));
      }
    }
    for (int q = 0; q < 4; ++q) _mm_storeu_ps(acc + j + 4 * q, sum[q]);
  }
#endif
  for (; j < n; ++j) {
    float sum = 0.0f;
    for (int k = 0; k < taps; ++k) sum += w[k] * static_cast<float>(rows[k * stride + j]);
    acc[j] = sum;
  }
}

// out[c] = clip-and-truncate(sum over k < taps, in order, of w[k] * pixels[k * C + c]) for each
// channel c, from 0 (GatherColumns). Reads one float past the last pixel when C == 3.
inline void SumPixels(const float* pixels, int64_t channels, const float* w, int taps,
                      uint8_t* out) {
#ifdef __SSE2__
  if (channels == 3 || channels == 4) {
    __m128 sum = _mm_setzero_ps();
    for (int k = 0; k < taps; ++k) {
      sum = _mm_add_ps(sum, _mm_mul_ps(_mm_set1_ps(w[k]), _mm_loadu_ps(pixels + k * channels)));
    }
    float lanes[4];
    _mm_storeu_ps(lanes, sum);
    for (int64_t c = 0; c < channels; ++c) out[c] = ClipTruncate(lanes[c]);
    return;
  }
#endif
  for (int64_t c = 0; c < channels; ++c) {
    float sum = 0.0f;
    for (int k = 0; k < taps; ++k) sum += w[k] * pixels[k * channels + c];
    out[c] = ClipTruncate(sum);
  }
}

thread_local std::vector<float> lerped;         // two x-lerped source rows
thread_local std::vector<float> intermediate;   // the antialiased resize's row pass

}  // namespace

extern "C" {

// src: uint8 [in_h, row_len] (row_len = in_w * C), C-contiguous; dst: uint8 [out_h, n],
// n = out_w * C. y_lo, y_hi, y_frac: [out_h]; left, right (offsets into a source row), x_frac:
// [n].
void PgResizeBilinear(const uint8_t* src, int64_t in_h, int64_t row_len, int64_t channels,
                      uint8_t* dst, int64_t out_h, int64_t n, const int64_t* y_lo,
                      const int64_t* y_hi, const float* y_frac, const int64_t* left,
                      const int64_t* right, const float* x_frac) {
  lerped.resize(2 * (n + 1));
  float* slot[2] = {lerped.data(), lerped.data() + n + 1};
  int64_t held[2] = {-1, -1};  // the source row in each slot
  auto lerped_row = [&](int64_t r, int keep) -> const float* {
    for (int s = 0; s < 2; ++s) {
      if (held[s] == r) return slot[s];
    }
    const int s = held[0] == keep ? 1 : 0;  // never evict the row this output row still needs
    LerpRow(src + r * row_len, (in_h - r) * row_len, channels, left, right, x_frac, n,
            slot[s]);
    held[s] = r;
    return slot[s];
  };
  for (int64_t i = 0; i < out_h; ++i) {
    const float* top = lerped_row(y_lo[i], -1);
    const float* bottom = lerped_row(y_hi[i], y_lo[i]);
    LerpRows(top, bottom, y_frac[i], n, dst + i * n);
  }
}

// TF's ComputeSpansCore for the triangle kernel, translation 0, without the zero-weight taps at
// either end of a span (TF adds their 0 * value to sums of non-negative terms, which changes
// no sum): starts, counts [out_size] and weights [out_size, span_size], zeros past each count.
// span_size comes from PgTriangleSpanSize; returns -1 if a span overflowed it.
int PgTriangleSpanSize(int64_t out_size, int64_t in_size) {
  const float scale = static_cast<float>(out_size) / static_cast<float>(in_size);
  const float inv_scale = 1.0 / scale;  // in double, then rounded, as TF
  const float kernel_scale = std::max(inv_scale, 1.0f);
  return static_cast<int>(std::min<int64_t>(2 * static_cast<int>(std::ceil(kernel_scale)) + 1,
                                            in_size));
}

int PgTriangleSpans(int64_t out_size, int64_t in_size, int span_size, int32_t* starts,
                    int32_t* counts, float* weights) {
  const float scale = static_cast<float>(out_size) / static_cast<float>(in_size);
  const float inv_scale = 1.0 / scale;
  const float inv_translate = -inv_scale * 0.0f;
  const float kernel_scale = std::max(inv_scale, 1.0f);
  const float one_over_kernel_scale = 1.0f / kernel_scale;
  std::fill(weights, weights + out_size * span_size, 0.0f);
  std::vector<float> temp;
  for (int64_t x = 0; x < out_size; ++x) {
    const float col_f = x + 0.5f;
    const float sample_f = col_f * inv_scale + inv_translate;
    starts[x] = 0;
    counts[x] = 0;
    if (sample_f < 0 || sample_f > in_size) continue;
    int64_t span_start = std::ceil(sample_f - 1.0f * kernel_scale - 0.5f);
    int64_t span_end = std::floor(sample_f + 1.0f * kernel_scale - 0.5f);
    span_start = std::min(std::max<int64_t>(span_start, 0), in_size - 1);
    span_end = std::min(std::max<int64_t>(span_end, 0), in_size - 1) + 1;
    if (span_end - span_start > span_size) return -1;
    float total = 0.0f;
    temp.clear();
    for (int64_t source = span_start; source < span_end; ++source) {
      const float pos = static_cast<float>(source) + 0.5f - sample_f;
      const float t = std::abs(pos * one_over_kernel_scale);
      const float weight = t < 1.0f ? 1.0f - t : 0.0f;
      total += weight;
      temp.push_back(weight);
    }
    if (!(std::abs(total) >= 1000.0f * std::numeric_limits<float>::min())) continue;
    const float one_over_total = 1.0f / total;
    size_t first = 0, last = temp.size();
    while (first < last && temp[first] == 0.0f) ++first;
    while (last > first && temp[last - 1] == 0.0f) --last;
    for (size_t k = first; k < last; ++k) {
      weights[x * span_size + (k - first)] = temp[k] * one_over_total;
    }
    starts[x] = static_cast<int32_t>(span_start + first);
    counts[x] = static_cast<int32_t>(last - first);
  }
  return span_size;
}

// src: uint8 [in_h, in_w, C]; dst: uint8 [out_h, out_w, C]; spans from PgTriangleSpans.
void PgResizeAntialiased(const uint8_t* src, int64_t in_w, int64_t channels, uint8_t* dst,
                         int64_t out_h, int64_t out_w,
                         int row_span, const int32_t* row_starts, const int32_t* row_counts,
                         const float* row_weights,
                         int col_span, const int32_t* col_starts, const int32_t* col_counts,
                         const float* col_weights) {
  const int64_t in_row = in_w * channels;
  intermediate.resize(out_h * in_row + 1);  // + 1: the vector path reads a 4th lane
  // GatherRows: each output row sums its source rows, weight by weight.
  for (int64_t y = 0; y < out_h; ++y) {
    float* acc = intermediate.data() + y * in_row;
    const uint8_t* rows = src + row_starts[y] * in_row;
    const float* w = row_weights + y * row_span;
    SumRows(rows, in_row, w, row_counts[y], in_row, acc);
  }
  // GatherColumns: each output pixel sums its source pixels of the intermediate row.
  for (int64_t y = 0; y < out_h; ++y) {
    const float* row = intermediate.data() + y * in_row;
    uint8_t* out = dst + y * out_w * channels;
    for (int64_t x = 0; x < out_w; ++x, out += channels) {
      SumPixels(row + col_starts[x] * channels, channels, col_weights + x * col_span,
                col_counts[x], out);
    }
  }
}

}  // extern "C"
