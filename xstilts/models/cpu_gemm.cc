// XLA FFI handler: C[i] = op(A[i]) @ op(B[i]) in float32 for a batch of matrices, through MKL's
// sgemm (found at run time).
//
// Built by xstilts/models/cpu_gemm.py with the FFI headers jaxlib ships; it links no BLAS: the
// Python side passes the addresses of `cblas_sgemm` and `cblas_sgemm_batch_strided` (sequential
// MKL) to xstilts_gemm_set_sgemm. The work is cut into blocks: ranges of the batch when it has
// at least as many matrices as there are parts, else row blocks of C (column blocks when C has
// few rows), shared between the calling thread and XLA's intra-op thread pool by
// ffi_units.h's RunUnits.

#include <algorithm>
#include <cstdint>

#include "ffi_units.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using xstilts::kNoTrans;
using xstilts::kRowMajor;
using xstilts::kTrans;
using xstilts::Sgemm;
using SgemmBatch = void (*)(int, int, int, int, int, int, float, const float*, int, int,
                            const float*, int, int, float, float*, int, int, int);
Sgemm g_sgemm = nullptr;
SgemmBatch g_sgemm_batch = nullptr;

struct Job {
  const float* a;
  const float* b;
  float* c;
  int64_t batch, m, n, k;
  bool trans_a, trans_b, split_batch, split_rows;
  int64_t block, blocks;

  void Run(int64_t i) const {
    const int lda = static_cast<int>(trans_a ? m : k), ldb = static_cast<int>(trans_b ? k : n);
    const int ta = trans_a ? kTrans : kNoTrans, tb = trans_b ? kTrans : kNoTrans;
    const int64_t start = i * block;
    if (split_batch) {
      const int64_t size = std::min(block, batch - start);
      g_sgemm_batch(kRowMajor, ta, tb, static_cast<int>(m), static_cast<int>(n),
                    static_cast<int>(k), 1.0f, a + start * m * k, lda, static_cast<int>(m * k),
                    b + start * k * n, ldb, static_cast<int>(k * n), 0.0f, c + start * m * n,
                    static_cast<int>(n), static_cast<int>(m * n), static_cast<int>(size));
      return;
    }
    const int64_t size = std::min(block, (split_rows ? m : n) - start);
    for (int64_t j = 0; j < batch; ++j) {
      const float* a_blk = a + j * m * k;
      const float* b_blk = b + j * k * n;
      float* c_blk = c + j * m * n;
      int64_t rows = m, cols = n;
      if (split_rows) {
        a_blk += trans_a ? start : start * k;
        c_blk += start * n;
        rows = size;
      } else {
        b_blk += trans_b ? start * k : start;
        c_blk += start;
        cols = size;
      }
      g_sgemm(kRowMajor, ta, tb, static_cast<int>(rows), static_cast<int>(cols),
              static_cast<int>(k), 1.0f, a_blk, lda, b_blk, ldb, 0.0f, c_blk,
              static_cast<int>(n));
    }
  }
};

ffi::Error GemmImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                    ffi::ResultBuffer<ffi::F32> c, bool trans_a, bool trans_b,
                    int64_t max_parts) {
  if (g_sgemm == nullptr || g_sgemm_batch == nullptr) {
    return ffi::Error::InvalidArgument("xstilts cpu_gemm: no sgemm was set");
  }
  auto ad = a.dimensions(), bd = b.dimensions();
  if (ad.size() != 3 || bd.size() != 3 || ad[0] != bd[0]) {
    return ffi::Error::InvalidArgument("xstilts cpu_gemm: operands must be [batch, ., .]");
  }
  const int64_t batch = ad[0];
  const int64_t m = trans_a ? ad[2] : ad[1], k = trans_a ? ad[1] : ad[2];
  const int64_t kb = trans_b ? bd[2] : bd[1], n = trans_b ? bd[1] : bd[2];
  if (k != kb) {
    return ffi::Error::InvalidArgument("xstilts cpu_gemm: contracting sizes differ");
  }
  if (batch == 0 || m == 0 || n == 0) return ffi::Error::Success();
  if (k == 0) {
    std::fill(c->typed_data(), c->typed_data() + batch * m * n, 0.0f);
    return ffi::Error::Success();
  }
  Job job;
  job.a = a.typed_data();
  job.b = b.typed_data();
  job.c = c->typed_data();
  job.batch = batch;
  job.m = m;
  job.n = n;
  job.k = k;
  job.trans_a = trans_a;
  job.trans_b = trans_b;
  // Below ~8 MFLOP a part costs more to hand over than it saves.
  const int64_t by_work = std::max<int64_t>(1, 2 * batch * m * n * k / (8 << 20));
  const int64_t parts = std::max<int64_t>(1, std::min(max_parts, by_work));
  job.split_batch = batch >= parts;
  job.split_rows = m >= 64 * parts;
  const int64_t extent = job.split_batch ? batch : job.split_rows ? m : n;
  // Keep row and column blocks SIMD- and cache-aligned.
  const int64_t quantum = job.split_batch ? 1 : job.split_rows ? 8 : 64;
  int64_t block = (extent + parts - 1) / parts;
  block = std::min(extent, (block + quantum - 1) / quantum * quantum);
  job.block = block;
  job.blocks = (extent + block - 1) / block;
  xstilts::RunUnits(pool, job.blocks, job.blocks, [&job] {
    return [&job](int64_t block) { job.Run(block); };
  });
  return ffi::Error::Success();
}

}  // namespace

extern "C" void xstilts_gemm_set_sgemm(void* sgemm, void* sgemm_batch_strided) {
  g_sgemm = reinterpret_cast<Sgemm>(sgemm);
  g_sgemm_batch = reinterpret_cast<SgemmBatch>(sgemm_batch_strided);
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(XstiltsCpuGemm, GemmImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b")
                                  .Attr<int64_t>("max_parts"));
