// The worker pool and the parallel-for shared by the CPU kernels (cpu_matmul.cc, the AVX2 ones,
// and cpu_matmul_bf16.cc, the AVX-512 BF16 ones). Each kernel library is its own shared object,
// loaded with its own copy of the pool (an unnamed namespace: no symbol is shared between the
// libraries, which are compiled for different instruction sets).

#ifndef PALIGEMMA_JAX_CPU_POOL_H_
#define PALIGEMMA_JAX_CPU_POOL_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

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

}  // namespace

#endif  // PALIGEMMA_JAX_CPU_POOL_H_
