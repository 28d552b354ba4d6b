// cucpu_mem.h — how a GPU would serve a warp's memory accesses: shared-memory wavefronts (bank
// conflicts) and global-memory 32-byte sectors (coalescing), summed per kernel. Included by
// cucpu.h; not a public entry point.
//
// Kernels report accesses through mem_access (chunkattn/prims.cuh does, for ldg / stg / lds / sts /
// cp.async; cucpu_ptx.h for ldmatrix). The lanes of one warp-wide instruction are found again by
// (call site, how many times this lane has run that site since the last flush): lanes of a
// converged warp run a site equally often. Accesses are grouped and costed when the block's
// threads all meet at __syncthreads (every access before it is complete) and when the block ends.
//
// Shared memory: 32 banks of 4 bytes. Accesses of up to 4 bytes are served for all 32 lanes at
// once, 8-byte accesses in 2 phases of 16 lanes, 16-byte accesses (and ldmatrix rows) in 4 phases
// of 8 lanes. A phase costs as many wavefronts as the most distinct 4-byte words any one bank
// holds; lanes reading the same word share it (broadcast).
// Global memory: an instruction moves every 32-byte sector its lanes touch; requested bytes are
// the bytes the lanes asked for. requested / (32 * sectors) is the sector efficiency.
#pragma once

#include <map>
#include <unordered_map>

namespace cucpu {

enum class MemSpace : uint8_t { kShared, kGlobal };
constexpr int kMemCategories = 8;  // global traffic categories (the project's CaTraffic)

// What the instructions of a set of blocks cost.
struct MemFigures {
  uint64_t smem_instructions = 0;  // warp-wide shared-memory instructions
  uint64_t smem_wavefronts = 0;
  uint64_t smem_bytes = 0;                  // bytes the lanes asked for
  uint64_t global_instructions = 0;         // warp-wide global-memory instructions
  uint64_t sectors[kMemCategories] = {};    // 32-byte sectors moved, by category
  uint64_t requested[kMemCategories] = {};  // bytes the lanes asked for, by category

  void add(const MemFigures& o) {
    smem_instructions += o.smem_instructions;
    smem_wavefronts += o.smem_wavefronts;
    smem_bytes += o.smem_bytes;
    global_instructions += o.global_instructions;
    for (int k = 0; k < kMemCategories; ++k) {
      sectors[k] += o.sectors[k];
      requested[k] += o.requested[k];
    }
  }
};

// One lane's access, waiting for the rest of its warp-wide instruction.
struct MemRecord {
  uint32_t site;  // interned call site
  uint32_t occurrence;
  uint16_t warp;
  uint8_t lane;
  MemSpace space;
  uint8_t category;
  uint32_t bytes;
  uintptr_t addr;
};

// A call site and the space it touches (cp.async reads global and writes shared at one site).
struct SiteKey {
  const char* file;
  uint32_t line, column;
  MemSpace space;
  bool operator==(const SiteKey& o) const {
    return file == o.file && line == o.line && column == o.column && space == o.space;
  }
};
struct SiteKeyHash {
  size_t operator()(const SiteKey& k) const {
    return std::hash<const void*>()(k.file) ^ (size_t(k.line) * 0x9e3779b97f4a7c15ull) ^
           (size_t(k.column) << 20) ^ size_t(k.space);
  }
};

// Per worker (kept in its Block, so it survives from block to block).
struct MemLog {
  std::vector<MemRecord> records;
  std::unordered_map<SiteKey, uint32_t, SiteKeyHash> sites;
  // Per thread, per site: {epoch, runs}; runs count only while epoch is current.
  std::vector<std::vector<std::pair<uint32_t, uint32_t>>> runs;
  uint32_t epoch = 1;
  MemFigures figures;  // of the running block
};

// Wavefronts of one warp-wide shared access: records of one instruction, sorted by lane.
inline uint64_t shared_wavefronts(const MemRecord* r, size_t n) {
  uint32_t size = 0;
  for (size_t i = 0; i < n; ++i) size = std::max(size, r[i].bytes);
  const unsigned lanes_per_phase = size <= 4 ? 32 : size <= 8 ? 16 : 8;
  uint64_t total = 0;
  size_t i = 0;
  while (i < n) {
    const unsigned phase = r[i].lane / lanes_per_phase;
    uint64_t words[32 * 4];
    size_t nw = 0;
    for (; i < n && r[i].lane / lanes_per_phase == phase; ++i) {
      const uint64_t first = r[i].addr / 4, last = (r[i].addr + r[i].bytes - 1) / 4;
      for (uint64_t w = first; w <= last && nw < std::size(words); ++w) words[nw++] = w;
    }
    std::sort(words, words + nw);
    nw = size_t(std::unique(words, words + nw) - words);
    unsigned per_bank[32] = {};
    unsigned worst = 0;
    for (size_t k = 0; k < nw; ++k) worst = std::max(worst, ++per_bank[words[k] % 32]);
    total += worst;
  }
  return total;
}

// 32-byte sectors touched by one warp-wide global access.
inline uint64_t global_sectors(const MemRecord* r, size_t n) {
  std::vector<uint64_t> sectors;
  sectors.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) {
    if (r[i].bytes == 0) continue;
    for (uint64_t s = r[i].addr / 32; s <= (r[i].addr + r[i].bytes - 1) / 32; ++s)
      sectors.push_back(s);
  }
  std::sort(sectors.begin(), sectors.end());
  return uint64_t(std::unique(sectors.begin(), sectors.end()) - sectors.begin());
}

// A kernel that runs long without a barrier is costed in pieces of this many records (an
// instruction cut in two is costed as two).
constexpr size_t kMemRecordCap = size_t(1) << 22;

// Costs every recorded instruction into log.figures; a new epoch restarts the run counts (at a
// barrier or the block's end, where every lane's earlier accesses are complete).
inline void mem_flush(MemLog& log, bool new_epoch = true) {
  auto& rec = log.records;
  if (rec.empty()) {
    if (new_epoch) ++log.epoch;
    return;
  }
  std::sort(rec.begin(), rec.end(), [](const MemRecord& a, const MemRecord& b) {
    if (a.warp != b.warp) return a.warp < b.warp;
    if (a.site != b.site) return a.site < b.site;
    if (a.occurrence != b.occurrence) return a.occurrence < b.occurrence;
    return a.lane < b.lane;
  });
  MemFigures& f = log.figures;
  for (size_t i = 0; i < rec.size();) {
    size_t j = i + 1;
    while (j < rec.size() && rec[j].warp == rec[i].warp && rec[j].site == rec[i].site &&
           rec[j].occurrence == rec[i].occurrence)
      ++j;
    uint64_t bytes = 0;
    for (size_t k = i; k < j; ++k) bytes += rec[k].bytes;
    if (rec[i].space == MemSpace::kShared) {
      ++f.smem_instructions;
      f.smem_bytes += bytes;
      f.smem_wavefronts += shared_wavefronts(&rec[i], j - i);
    } else {
      ++f.global_instructions;
      f.requested[rec[i].category] += bytes;
      f.sectors[rec[i].category] += global_sectors(&rec[i], j - i);
    }
    i = j;
  }
  rec.clear();
  if (new_epoch) ++log.epoch;
}

// Whether launches record accesses (CUCPU_MEMSTATS=0 turns it off; read at every launch).
inline thread_local bool tl_mem_enabled = true;

// Per kernel name: launches and the figures of their blocks, since the last reset.
struct KernelStats {
  uint64_t launches = 0;
  MemFigures mem;
};
inline std::mutex& kernel_stats_mutex() {
  static std::mutex m;
  return m;
}
inline std::map<std::string, KernelStats>& kernel_stats_table() {
  static auto* table = new std::map<std::string, KernelStats>;
  return *table;
}
inline std::map<std::string, KernelStats> kernel_stats_snapshot() {
  std::lock_guard<std::mutex> lock(kernel_stats_mutex());
  return kernel_stats_table();
}
inline void kernel_stats_reset() {
  std::lock_guard<std::mutex> lock(kernel_stats_mutex());
  kernel_stats_table().clear();
}
inline void kernel_stats_add(const std::string& name, const MemFigures& mem) {
  std::lock_guard<std::mutex> lock(kernel_stats_mutex());
  KernelStats& s = kernel_stats_table()[name];
  ++s.launches;
  s.mem.add(mem);
}

}  // namespace cucpu
