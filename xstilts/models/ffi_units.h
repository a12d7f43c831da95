// Shares units of work between the calling thread and XLA's intra-op thread pool, for the FFI
// handlers in cpu_gemm.cc and ../evals/knn_cpu.cc (cpu_gemm.build_ffi_library puts this folder
// on their include path and this file in their cache key), and declares the CBLAS sgemm both
// call (found at run time: neither links a BLAS).

#ifndef XSTILTS_FFI_UNITS_H_
#define XSTILTS_FFI_UNITS_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace xstilts {

// CBLAS's layout and transpose constants (cblas.h), and its sgemm with 32-bit ints.
enum { kRowMajor = 101, kNoTrans = 111, kTrans = 112 };
using Sgemm = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int,
                       float, float*, int);

// Runs units 0 .. units-1 on the calling thread and on up to parts-1 tasks of `pool`, all
// taking units from one atomic counter: the caller never waits for a task that has not
// started, so a busy pool cannot deadlock it, and no second thread pool competes with XLA's.
// `make_worker()` is called once by each thread that takes a unit, before its first one, and
// returns that thread's `void(int64_t unit)` (per-thread buffers live in it). Returns when every
// unit is done; a task that starts later finds none left and touches nothing else.
template <typename MakeWorker>
void RunUnits(xla::ffi::ThreadPool& pool, int64_t units, int64_t parts, MakeWorker make_worker) {
  struct Counters {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto counters = std::make_shared<Counters>();
  auto work = [counters, units, make_worker] {
    int64_t unit = counters->next.fetch_add(1);
    if (unit >= units) return;
    auto worker = make_worker();
    for (; unit < units; unit = counters->next.fetch_add(1)) {
      worker(unit);
      if (counters->done.fetch_add(1) + 1 == units) {
        std::lock_guard<std::mutex> lock(counters->mu);
        counters->cv.notify_all();
      }
    }
  };
  for (int64_t i = 1; i < std::min(parts, units); ++i) pool.Schedule([work] { work(); });
  work();
  std::unique_lock<std::mutex> lock(counters->mu);
  counters->cv.wait(lock, [&] { return counters->done.load() == units; });
}

}  // namespace xstilts

#endif  // XSTILTS_FFI_UNITS_H_
