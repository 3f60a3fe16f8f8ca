// Which vectorised variant of the CPU row kernels runs: the best this CPU supports, or the one
// named by FIDEC_CPU_ISA (auto | avx512 | avx2 | baseline), so that tests can run every variant
// on one machine. Resolved once, at the extension's import.
#pragma once

namespace fidec {

enum class CpuIsa { Baseline = 0, Avx2 = 1, Avx512 = 2 };

// The variant in use; throws (c10::Error) if FIDEC_CPU_ISA names an unknown variant or one this
// CPU cannot run.
CpuIsa active_cpu_isa();
const char* cpu_isa_name(CpuIsa isa);
// Variants this build has and this CPU can run, best first, e.g. "avx512,avx2,baseline".
const char* supported_cpu_isas();

}  // namespace fidec
