// XLA FFI handler: exact top-k inner products between the rows of x [N, d] and y [M, d], both
// ways (x -> y and y -> x), in one pass over x . y^T through a BLAS sgemm found at run time.
//
// Built by xstilts/evals/knn_cpu.py with the FFI headers jaxlib ships; it links no BLAS: the
// Python side passes the addresses of each library's functions to xstilts_knn_set_sgemm, and
// the call's `library` attribute picks one: 0 = MKL's `cblas_sgemm` (32-bit ints, sequential
// threading layer), 1 = OpenBLAS's (numpy's ILP64 build: 64-bit ints), one thread per call
// (our units already use every core). OpenBLAS's thread count is process-wide: despite its
// name `openblas_set_num_threads_local` sets the global count and returns the previous one
// (OpenBLAS 0.3.31, checked), so the count is 1 while any search runs and is restored when the
// last one ends.
//
// A unit of work is a chunk of rows of x. It runs through y in tiles: one sgemm gives the
// [chunk, tile] scores, which are scanned once for the chunk rows' top-k lists (x -> y) and once
// for the tile columns' top-k lists (y -> x). A score enters a list only when it beats the
// list's last entry, checked for 16 scores at a time (vectorised compares) before any scalar
// work; on random data a row of 50,000 scores makes ~40 insertions. Units are shared between
// the calling thread and XLA's intra-op pool by ../models/ffi_units.h's RunUnits (as in
// cpu_gemm.cc); each worker keeps its own column lists, merged at the end.
//
// Ties: of equal scores the lower index comes first (a row list sees columns in increasing
// order, a worker's column list sees its rows in increasing order, and the merge compares
// (score, index)), so the result does not depend on how units were shared out.

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "ffi_units.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using xstilts::kNoTrans;
using xstilts::kRowMajor;
using xstilts::kTrans;
using xstilts::Sgemm;
using Sgemm64 = void (*)(int, int, int, int64_t, int64_t, int64_t, float, const float*, int64_t,
                         const float*, int64_t, float, float*, int64_t);
using SetThreads = int (*)(int);  // sets the thread count, returns the previous one

// One BLAS: a 32-bit- or a 64-bit-int sgemm, and (OpenBLAS) its thread-count setter.
struct SgemmLibrary {
  Sgemm sgemm = nullptr;
  Sgemm64 sgemm64 = nullptr;
  SetThreads set_threads = nullptr;

  bool Ready() const { return sgemm != nullptr || sgemm64 != nullptr; }

  // C [rows, width] = A [rows, d] . B [width, d]^T, row-major.
  void ScoresNT(int64_t rows, int64_t width, int64_t d, const float* a, const float* b,
                float* c) const {
    if (sgemm != nullptr) {
      sgemm(kRowMajor, kNoTrans, kTrans, static_cast<int>(rows), static_cast<int>(width),
            static_cast<int>(d), 1.0f, a, static_cast<int>(d), b, static_cast<int>(d), 0.0f, c,
            static_cast<int>(width));
    } else {
      sgemm64(kRowMajor, kNoTrans, kTrans, rows, width, d, 1.0f, a, d, b, d, 0.0f, c, width);
    }
  }
};
constexpr int64_t kLibraries = 2;  // 0 = MKL, 1 = OpenBLAS
SgemmLibrary g_libraries[kLibraries];

// Holds a library's thread count at 1 while any search with it runs (process-wide, see above).
class OneBlasThread {
 public:
  explicit OneBlasThread(const SgemmLibrary& blas) : set_(blas.set_threads) {
    if (set_ == nullptr) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (active_++ == 0) prior_ = set_(1);
  }
  ~OneBlasThread() {
    if (set_ == nullptr) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (--active_ == 0) set_(prior_);
  }

 private:
  SetThreads set_;
  static inline std::mutex mu_;
  static inline int active_ = 0;
  static inline int prior_ = 0;
};
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int kLanes = 16;

// Puts (value, index) into the sorted list v / id of k entries (best first), whose last entry it
// beats; an equal value goes after the entries already held.
inline void Insert(float* v, int32_t* id, int64_t k, float value, int32_t index) {
  int64_t j = k - 1;
  while (j > 0 && value > v[j - 1]) {
    v[j] = v[j - 1];
    id[j] = id[j - 1];
    --j;
  }
  v[j] = value;
  id[j] = index;
}

// Whether one of the 16 scores at `s` beats `last` or (with `col_last`) its column's last entry.
// SSE2 (every x86-64 CPU): GCC -O2 left the plain loop scalar, ~4 cycles a score.
inline bool AnyAbove(const float* s, float last, const float* col_last) {
#if defined(__SSE2__)
  const __m128 t = _mm_set1_ps(last);
  __m128 hit = _mm_setzero_ps();
  for (int i = 0; i < kLanes; i += 4) {
    const __m128 x = _mm_loadu_ps(s + i);
    hit = _mm_or_ps(hit, _mm_cmpgt_ps(x, t));
    if (col_last) hit = _mm_or_ps(hit, _mm_cmpgt_ps(x, _mm_loadu_ps(col_last + i)));
  }
  return _mm_movemask_ps(hit) != 0;
#else
  bool hit = false;
  for (int i = 0; i < kLanes; ++i) hit |= s[i] > last || (col_last && s[i] > col_last[i]);
  return hit;
#endif
}

// One worker's y -> x lists: [M, k] entries and each list's last value [M], kept apart so that
// the threshold compares read contiguous memory.
struct ColumnLists {
  std::vector<float> v;
  std::vector<int32_t> id;
  std::vector<float> last;
  ColumnLists(int64_t m, int64_t k) : v(m * k, kNegInf), id(m * k, -1), last(m, kNegInf) {}
};

// Scans `scores` [rows, cols] (row ids first_row + r, column ids first_col + c) once, putting
// each score into its row's list (row_v / row_id, [rows, kx]) and, when `cols` is given, into
// its column's list, wherever it beats the list's last entry.
void Scan(const float* scores, int64_t rows, int64_t cols, int64_t first_row, int64_t first_col,
          int64_t kx, int64_t ky, float* row_v, int32_t* row_id, ColumnLists* columns) {
  float* col_last = columns ? columns->last.data() + first_col : nullptr;
  float* col_v = columns ? columns->v.data() + first_col * ky : nullptr;
  int32_t* col_id = columns ? columns->id.data() + first_col * ky : nullptr;
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = scores + r * cols;
    float* v = row_v + r * kx;
    int32_t* id = row_id + r * kx;
    const int32_t row = static_cast<int32_t>(first_row + r);
    float last = v[kx - 1];
    for (int64_t c0 = 0; c0 < cols; c0 += kLanes) {
      const int64_t end = std::min(cols, c0 + kLanes);
      if (end - c0 == kLanes && !AnyAbove(s + c0, last, columns ? col_last + c0 : nullptr)) {
        continue;
      }
      for (int64_t c = c0; c < end; ++c) {
        if (s[c] > last) {
          Insert(v, id, kx, s[c], static_cast<int32_t>(first_col + c));
          last = v[kx - 1];
        }
        if (columns && s[c] > col_last[c]) {
          Insert(col_v + c * ky, col_id + c * ky, ky, s[c], row);
          col_last[c] = col_v[c * ky + ky - 1];
        }
      }
    }
  }
}

struct Job {
  const float* x;
  const float* y;
  float* row_v;
  int32_t* row_id;
  int64_t n, m, d, kx, ky, chunk, tile, units;
  bool both;
  const SgemmLibrary* blas;
  std::mutex mu;
  std::vector<std::unique_ptr<ColumnLists>> columns;  // one per worker

  void Unit(int64_t u, float* scores, ColumnLists* cols) const {
    const int64_t r0 = u * chunk, rows = std::min(chunk, n - r0);
    float* rv = row_v + r0 * kx;
    int32_t* ri = row_id + r0 * kx;
    std::fill(rv, rv + rows * kx, kNegInf);
    std::fill(ri, ri + rows * kx, -1);
    for (int64_t c0 = 0; c0 < m; c0 += tile) {
      const int64_t width = std::min(tile, m - c0);
      blas->ScoresNT(rows, width, d, x + r0 * d, y + c0 * d, scores);
      Scan(scores, rows, width, r0, c0, kx, ky, rv, ri, cols);
    }
  }

  // A worker for RunUnits: its own score buffer and (both ways) its own column lists.
  auto MakeWorker() {
    ColumnLists* cols = nullptr;
    if (both) {
      auto owned = std::make_unique<ColumnLists>(m, ky);
      cols = owned.get();
      std::lock_guard<std::mutex> lock(mu);
      columns.push_back(std::move(owned));
    }
    return [this, cols, scores = std::vector<float>(std::min(chunk, n) * std::min(tile, m))](
               int64_t unit) mutable { Unit(unit, scores.data(), cols); };
  }

  // The workers' column lists merged into col_v / col_id [M, ky], by (score, lower index).
  void MergeColumns(float* col_v, int32_t* col_id) const {
    const size_t workers = columns.size();
    std::vector<int64_t> head(workers);
    for (int64_t j = 0; j < m; ++j) {
      std::fill(head.begin(), head.end(), 0);
      for (int64_t slot = 0; slot < ky; ++slot) {
        size_t best = 0;
        float best_v = kNegInf;
        int32_t best_id = -1;
        for (size_t w = 0; w < workers; ++w) {
          if (head[w] >= ky) continue;
          const float v = columns[w]->v[j * ky + head[w]];
          const int32_t id = columns[w]->id[j * ky + head[w]];
          if (id >= 0 && (best_id < 0 || v > best_v || (v == best_v && id < best_id))) {
            best = w;
            best_v = v;
            best_id = id;
          }
        }
        col_v[j * ky + slot] = best_v;
        col_id[j * ky + slot] = best_id;
        if (best_id >= 0) ++head[best];
      }
    }
  }
};

ffi::Error KnnImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> y,
                   ffi::ResultBuffer<ffi::F32> row_v, ffi::ResultBuffer<ffi::S32> row_id,
                   ffi::ResultBuffer<ffi::F32> col_v, ffi::ResultBuffer<ffi::S32> col_id,
                   int64_t chunk, int64_t tile, int64_t max_parts, int64_t library) {
  if (library < 0 || library >= kLibraries || !g_libraries[library].Ready()) {
    return ffi::Error::InvalidArgument("xstilts knn_cpu: no sgemm set for this library");
  }
  auto xd = x.dimensions(), yd = y.dimensions();
  auto rd = row_v->dimensions(), cd = col_v->dimensions();
  if (xd.size() != 2 || yd.size() != 2 || xd[1] != yd[1] || rd.size() != 2 || cd.size() != 2 ||
      rd[0] != xd[0] || (cd[0] != yd[0] && cd[0] != 0)) {
    return ffi::Error::InvalidArgument(
        "xstilts knn_cpu: expected x [N, d], y [M, d], rows [N, kx], columns [M or 0, ky]");
  }
  Job job;
  job.n = xd[0];
  job.m = yd[0];
  job.d = xd[1];
  job.kx = rd[1];
  job.ky = cd[1];
  job.both = cd[0] != 0;
  if (job.n == 0 || job.m == 0 || job.kx < 1 || job.kx > job.m ||
      (job.both && (job.ky < 1 || job.ky > job.n)) || chunk < 1 || tile < 1) {
    return ffi::Error::InvalidArgument("xstilts knn_cpu: need 1 <= kx <= M, 1 <= ky <= N");
  }
  job.x = x.typed_data();
  job.y = y.typed_data();
  job.row_v = row_v->typed_data();
  job.row_id = row_id->typed_data();
  job.chunk = chunk;
  job.tile = tile;
  job.blas = &g_libraries[library];
  job.units = (job.n + chunk - 1) / chunk;
  {
    OneBlasThread one_thread(*job.blas);
    xstilts::RunUnits(pool, job.units, max_parts, [&job] { return job.MakeWorker(); });
  }
  if (job.both) job.MergeColumns(col_v->typed_data(), col_id->typed_data());
  return ffi::Error::Success();
}

}  // namespace

// Sets library `library`'s functions: a 32-bit-int `sgemm` or a 64-bit-int `sgemm64` (the other
// null), and `set_threads` (null where the library runs sequentially already, as MKL's
// sequential layer does).
extern "C" void xstilts_knn_set_sgemm(int64_t library, void* sgemm, void* sgemm64,
                                      void* set_threads) {
  if (library < 0 || library >= kLibraries) return;
  g_libraries[library].sgemm = reinterpret_cast<Sgemm>(sgemm);
  g_libraries[library].sgemm64 = reinterpret_cast<Sgemm64>(sgemm64);
  g_libraries[library].set_threads = reinterpret_cast<SetThreads>(set_threads);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(XstiltsCpuKnn, KnnImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("chunk")
                                  .Attr<int64_t>("tile")
                                  .Attr<int64_t>("max_parts")
                                  .Attr<int64_t>("library"));
