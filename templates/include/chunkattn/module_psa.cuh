// chunkattn/module_psa.cuh — ca_psa_meta and ca_psa_decode of a module built from the CUDA source
// (cuda and emu targets; ABI in chunkattn/psa_abi.h). Host code: checks the arguments, then
// launches on the stream, without a host synchronisation and in fixed shapes from the context's
// scalars: chunk_meta.cuh's kernel (ca_psa_meta); select.cuh's (the lists and counts); unless
// select_only, psa_guard.cuh's when guard = 1 (the progressive step: it may grow the lists),
// chunk_select_kernels.cuh's (the selection masks) and the two-phase kernels instantiated with
// kListed (module_cuda.cuh decode).
#ifndef CHUNKATTN_MODULE_PSA_CUH_
#define CHUNKATTN_MODULE_PSA_CUH_

#include <string>

#include "chunkattn/chunk_meta.cuh"
#include "chunkattn/chunk_select_kernels.cuh"
#include "chunkattn/psa_guard.cuh"
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

static_assert(CA_PSA_PHASE1_TILE_ROWS == 128, "psa_abi.h sizes tile_sel with phase 1's kMT");

template <class Cfg>
int psa_select(const CaDecodeParams* p, const CaPsaParams* s, void* stream) {
  if (!p || !s) return fail(CA_ERR_INVALID, "ca_psa_decode: null params");
  if (p->abi_version != CA_ABI_VERSION || p->struct_bytes != sizeof(CaDecodeParams) ||
      s->struct_bytes != sizeof(CaPsaParams))
    return fail(CA_ERR_INVALID, "ca_psa_decode: params from another ABI version");
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

// ca_psa_decode: the select, then (without select_only) the guard when asked (psa_guard.cuh), the
// selection masks and the list-driven two-phase decode. Lists that hold every chunk make the decode
// the dense one, operation for operation (the masks are all 1 and phase 2's token order is the
// dense order).
template <class Cfg, class Variant>
int psa_decode(const CaDecodeParams* p, const CaPsaParams* s, void* stream) {
  if (int e = psa_select<Cfg>(p, s, stream)) return e;
  if (s->select_only) return ok();
  const KernelContext host{p->context_host};
  const uint64_t rows = uint64_t(host.num_rows()) * Cfg::kKvHeads;
  if (s->guard_added)
    if (int e = launch("psa_fill", psa_fill_kernel<128>, dim3(unsigned((rows + 127) / 128)),
                       dim3(128), 0, stream, s->guard_added, int32_t(rows), int32_t(0)))
      return e;
  if (host.num_requests() == 0) return ok();
  if (s->guard)
    if (int e = launch("psa_guard", psa_guard_kernel<Cfg>,
                       dim3(unsigned(host.num_requests()), unsigned(Cfg::kKvHeads)),
                       dim3(GuardPlan<Cfg>::kThreads), GuardPlan<Cfg>::kSmemBytes, stream,
                       DecodeView::from(*p), DecodeTensors::from(*p),
                       GuardIo{static_cast<int32_t*>(s->scratch), s->lists, s->counts,
                               s->guard_added, s->max_chunks, psa::SelectArgs::from(*s)}))
      return e;
  unsigned char* base = static_cast<unsigned char*>(s->scratch);
  ChunkSelectScratch out;
  out.row_sel = base + ca_psa_align(ca_psa_scratch_bytes(host.num_requests(), Cfg::kKvHeads,
                                                         Cfg::kQHeads, s->max_chunks));
  out.private_begin =
      reinterpret_cast<int32_t*>(out.row_sel + ca_psa_align(rows * uint64_t(s->max_chunks)));
  out.tile_sel = reinterpret_cast<uint8_t*>(out.private_begin) + ca_psa_align(rows * 4);
  const ChunkSelection sel{s->lists,          s->counts,    out.row_sel,
                           out.private_begin, out.tile_sel, s->max_chunks};
  const DecodeView ctx = DecodeView::from(*p);
  if (int e = launch("psa_row_select", psa_row_select_kernel<Cfg>,
                     dim3(unsigned(host.num_rows()), unsigned(Cfg::kKvHeads)),
                     dim3(kRowSelectThreads), 0, stream, ctx, sel, out))
    return e;
  if (host.num_runs() > 0)
    if (int e = launch("psa_tile_select", psa_tile_select_kernel<Cfg>,
                       dim3(unsigned(phase1_items<Cfg>(host.num_runs(), host.num_partials())),
                            unsigned(Cfg::kKvHeads)),
                       dim3(kRowSelectThreads), 0, stream, ctx, sel, out))
      return e;
  return decode<Cfg, Variant, true>(*p, stream, sel);
}

}  // namespace ca::cuda_module

#endif  // CHUNKATTN_MODULE_PSA_CUH_
