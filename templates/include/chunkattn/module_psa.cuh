// chunkattn/module_psa.cuh — ca_psa_meta and ca_psa_decode (select only) of a module built from
// the CUDA source (cuda and emu targets; ABI in chunkattn/psa_abi.h). Host code: checks the
// arguments, then launches chunk_meta.cuh's and select.cuh's kernels on the stream, without a
// host synchronisation. The list-driven decode is the cpu target's alone so far: without
// select_only, ca_psa_decode answers CA_ERR_UNSUPPORTED (the runtime then decodes densely).
#ifndef CHUNKATTN_MODULE_PSA_CUH_
#define CHUNKATTN_MODULE_PSA_CUH_

#include <string>

#include "chunkattn/chunk_meta.cuh"
#include "chunkattn/module_cuda.cuh"
#include "chunkattn/psa_abi.h"
#include "chunkattn/select.cuh"

namespace ca::cuda_module {

template <class Cfg>
int psa_meta(const CaPsaMetaParams* p, void* stream) {
  if (!p) return fail(CA_ERR_INVALID, "ca_psa_meta: null params");
  if (p->num_chunks < 0) return fail(CA_ERR_INVALID, "ca_psa_meta: negative num_chunks");
  if (p->num_chunks == 0) return ok();
  if (!p->k_pool || !p->meta || !p->slots) return fail(CA_ERR_INVALID, "ca_psa_meta: null pointer");
  return launch("psa_meta", psa_meta_kernel<Cfg>,
                dim3(unsigned(p->num_chunks), unsigned(Cfg::kKvHeads)), dim3(kMetaThreads), 0,
                stream, p->k_pool, p->num_slots, p->meta, p->slots);
}

template <class Cfg>
int psa_select(const CaDecodeParams* p, const CaPsaParams* s, void* stream) {
  if (!p || !s) return fail(CA_ERR_INVALID, "ca_psa_decode: null params");
  if (p->abi_version != CA_ABI_VERSION || p->struct_bytes != sizeof(CaDecodeParams) ||
      s->struct_bytes != sizeof(CaPsaParams))
    return fail(CA_ERR_INVALID, "ca_psa_decode: params from another ABI version");
  if (!s->select_only)
    return fail(CA_ERR_UNSUPPORTED,
                "ca_psa_decode: this module runs the PSA select only (select_only = 1); the "
                "list-driven decode runs on the cpu target");
  ctx::Error error;
  if (!ctx::check_layout(p->context_host, p->context_words, &error))
    return fail(CA_ERR_INVALID, std::string("ca_psa_decode: ") + error.message);
  if (!s->meta || !s->lists || !s->counts || !p->q || !p->k_pool)
    return fail(CA_ERR_INVALID, "ca_psa_decode: null pointer");
  if (!(s->mass > 0.f) || s->k_min < 0 || s->k_max < 1 || s->recent_chunks < 0 ||
      !(s->safety_net >= 0.f && s->safety_net <= 1.f) || s->max_chunks < 1)
    return fail(CA_ERR_INVALID, "ca_psa_decode: parameter out of range");
  const KernelContext host{p->context_host};
  for (int r = 0; r < host.num_rows(); ++r)
    if (host.row_num_chunks(r) > s->max_chunks)
      return fail(CA_ERR_INVALID, "ca_psa_decode: row " + std::to_string(r) + " has " +
                                      std::to_string(host.row_num_chunks(r)) +
                                      " chunks, lists hold " + std::to_string(s->max_chunks));
  const int rows = host.num_rows() * Cfg::kKvHeads;
  if (int e = launch("psa_fill_counts", psa_fill_counts_kernel<128>,
                     dim3(unsigned((rows + 127) / 128)), dim3(128), 0, stream, s->counts, rows))
    return e;
  if (host.num_requests() == 0) return ok();
  if (!s->scratch) return fail(CA_ERR_INVALID, "ca_psa_decode: null scratch");
  using Plan = SelectPlan<Cfg>;
  const SelectIo io{s->meta,       s->lists,
                    s->counts,     static_cast<int32_t*>(s->scratch),
                    s->max_chunks, psa::SelectArgs::from(*s)};
  return launch("psa_select", psa_select_kernel<Cfg>,
                dim3(unsigned(host.num_requests()), unsigned(Cfg::kKvHeads)), dim3(Plan::kThreads),
                Plan::kSmemBytes, stream, DecodeView::from(*p), DecodeTensors::from(*p), io);
}

}  // namespace ca::cuda_module

#endif  // CHUNKATTN_MODULE_PSA_CUH_
