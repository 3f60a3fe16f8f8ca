// Which vectorised variant of the CPU row kernels runs: the best this CPU supports, or the one
// named by FIDEC_CPU_ISA (auto | avx512 | avx2 | baseline), so that tests can run every variant
// on one machine. Resolved once, at the extension's import.
#pragma once

// Kernel files compile one table of row functions per variant where GCC can target x86 ISAs (FIDEC_MULTI_ISA),
// and inline their row bodies into each variant's functions (FIDEC_ALWAYS_INLINE).
#if defined(__GNUC__) && defined(__x86_64__)
#define FIDEC_MULTI_ISA 1
#endif

#define FIDEC_ALWAYS_INLINE inline __attribute__((always_inline))

namespace fidec {

enum class CpuIsa { Baseline = 0, Avx2 = 1, Avx512 = 2 };

// The variant in use; throws (c10::Error) if FIDEC_CPU_ISA names an unknown variant or one this
// CPU cannot run.
CpuIsa active_cpu_isa();
const char* cpu_isa_name(CpuIsa isa);
// Variants this build has and this CPU can run, best first, e.g. "avx512,avx2,baseline".
const char* supported_cpu_isas();

// The table of row functions compiled for the active variant (each kernel file compiles one table per variant).
template <typename Rows>
const Rows& rows_for_active_isa(const Rows& avx512, const Rows& avx2, const Rows& baseline) {
  switch (active_cpu_isa()) {
    case CpuIsa::Avx512:
      return avx512;
    case CpuIsa::Avx2:
      return avx2;
    default:
      return baseline;
  }
}

}  // namespace fidec
