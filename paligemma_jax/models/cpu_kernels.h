// What the two CPU kernel libraries share (cpu_matmul.cc, the AVX2 ones, and cpu_matmul_bf16.cc,
// the AVX-512 BF16 ones): the worker pool and parallel-for, the check that a weight buffer holds a
// layer, and the split of an NN product's contraction into pieces. Each kernel library is its own shared object,
// loaded with its own copy of the pool (an unnamed namespace: no symbol is shared between the
// libraries, which are compiled for different instruction sets).

#ifndef PALIGEMMA_JAX_CPU_KERNELS_H_
#define PALIGEMMA_JAX_CPU_KERNELS_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace {

// A pool of worker threads that lives as long as the process (never destroyed, so exit order
// does not matter). Workers sleep on a condition variable between calls; their thread_local
// scratch buffers persist. Calls from several XLA threads take turns.
class Pool {
 public:
  static Pool& Get() {
    static Pool* pool = new Pool(std::max(1u, std::thread::hardware_concurrency()));
    return *pool;
  }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(0), ..., fn(n - 1) (n <= size()), fn(0) on the calling thread; returns when all end.
  void Run(int n, const std::function<void(int)>& fn) {
    std::lock_guard<std::mutex> turn(run_mu_);
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &fn;
      want_ = n;
      pending_ = n - 1;
      ++generation_;
    }
    cv_.notify_all();
    fn(0);
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return pending_ == 0; });
  }

 private:
  explicit Pool(unsigned threads) {
    for (unsigned i = 1; i < threads; ++i) workers_.emplace_back([this, i] { Work(i); });
  }

  void Work(int index) {
    int64_t seen = 0;
    for (;;) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (index >= want_) continue;
      const std::function<void(int)>* job = job_;
      lock.unlock();
      (*job)(index);
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex run_mu_, mu_;
  std::condition_variable cv_, done_;
  const std::function<void(int)>* job_ = nullptr;
  int want_ = 0, pending_ = 0;
  int64_t generation_ = 0;
};

// Runs fn(lo, hi) over [0, n) in pieces of `grain` (a multiple of it), on up to `threads` pool
// threads. Pieces are handed out from a shared counter, so a thread slowed by another process
// on its core takes fewer of them instead of holding everyone up.
template <typename Fn>
void Parallel(int64_t n, int64_t grain, int threads, Fn fn) {
  const int64_t chunks = (n + grain - 1) / grain;
  Pool& pool = Pool::Get();
  const int t = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>({threads, chunks, pool.size()})));
  if (t == 1) return fn(0, n);
  const int64_t pieces = std::min<int64_t>(chunks, 8 * t);
  const int64_t per = (chunks + pieces - 1) / pieces * grain;
  std::atomic<int64_t> next{0};
  pool.Run(t, [&](int) {
    for (int64_t lo; (lo = next.fetch_add(per)) < n;) fn(lo, std::min(n, lo + per));
  });
}

// Whether w holds whole layers of `size` elements and `layer` is one of them. w comes in its own
// shape (the output's shape says how to read it): reshaping a stack in the graph made XLA copy it
// when a decode loop took it as an operand.
template <typename Buffer>
bool InStack(const Buffer& w, int64_t layer, int64_t size) {
  const int64_t n = static_cast<int64_t>(w.element_count());
  return size > 0 && n % size == 0 && layer >= 0 && layer < n / size;
}

// y[M, L, F] = x[M, C] . w[L, C, F] with the contraction split into up to 8 pieces, each streaming
// whole rows of w (a contiguous run of memory, which the hardware prefetchers follow best) into its
// own partial sums of y; the partials are added in piece order, so results do not depend on which
// thread ran what. Splitting output columns instead left narrow outputs (down projection: 2048 of
// them) with short runs per row: measured 13-15 GB/s, against ~30 for whole rows. Pieces start
// at multiples of `align` rows. rows(x + c0, x_stride, M, c1 - c0, w_rows, F, y, y_stride) adds
// x[:, c0:c1] . w_rows to y. W is the weights' storage (bf16 bits, or int8 values).
template <typename X, typename W, typename Rows>
void SplitContraction(const X* x, int64_t M, int64_t C, int64_t L, int64_t F, const W* w,
                      float* y, int threads, int64_t align, Rows rows) {
  const int64_t total = L * C, size = M * L * F;
  const int64_t pieces = std::clamp<int64_t>(total * F / (1 << 18), 1, 8);  // >= 512 KB each
  const int64_t per = ((total + pieces - 1) / pieces + align - 1) / align * align;
  // The partial sums live in a buffer the calling thread keeps (8 rows of a 16384-wide output:
  // 4 MB, which a fresh allocation faulted in and zeroed on every call), each piece zeroed by the
  // thread that fills it, and they are added up in parallel over the output, piece 0 first.
  static thread_local std::vector<float> buffer;
  if (buffer.size() < static_cast<size_t>(pieces * size)) buffer.resize(pieces * size);
  float* partial = buffer.data();
  Parallel(pieces, 1, threads, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      float* out = partial + p * size;
      std::fill(out, out + size, 0.0f);
      const int64_t lo = p * per, hi = std::min(total, lo + per);
      for (int64_t l = lo / C; l * C < hi; ++l) {  // the piece's part of matrix l
        const int64_t c0 = std::max(lo - l * C, int64_t{0}), c1 = std::min(hi - l * C, C);
        if (c1 > c0) rows(x + c0, C, M, c1 - c0, w + (l * C + c0) * F, F, out + l * F, L * F);
      }
    }
  });
  Parallel(size, 1 << 14, threads, [&](int64_t lo, int64_t hi) {
    std::copy(partial + lo, partial + hi, y + lo);
    for (int64_t p = 1; p < pieces; ++p) {
      const float* part = partial + p * size;
      for (int64_t i = lo; i < hi; ++i) y[i] += part[i];
    }
  });
}

}  // namespace

#endif  // PALIGEMMA_JAX_CPU_KERNELS_H_
