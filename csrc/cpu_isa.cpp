#include "cpu_isa.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

namespace fidec {
namespace {

bool cpu_has(CpuIsa isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  switch (isa) {
    case CpuIsa::Avx512:
      // F for the fp32 rows, BW for the 16-bit lanes of the bf16 rows (every AVX-512 CPU since Skylake-SP)
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    case CpuIsa::Avx2:
      return __builtin_cpu_supports("avx2");
    case CpuIsa::Baseline:
      return true;
  }
  return false;
#else
  return isa == CpuIsa::Baseline;  // only the portable variant is compiled off x86-64
#endif
}

CpuIsa resolve() {
  const char* env = std::getenv("FIDEC_CPU_ISA");
  const std::string want = env ? env : "auto";
  if (want.empty() || want == "auto") {
    for (CpuIsa isa : {CpuIsa::Avx512, CpuIsa::Avx2})
      if (cpu_has(isa)) return isa;
    return CpuIsa::Baseline;
  }
  for (CpuIsa isa : {CpuIsa::Avx512, CpuIsa::Avx2, CpuIsa::Baseline}) {
    if (want == cpu_isa_name(isa)) {
      TORCH_CHECK(cpu_has(isa), "FIDEC_CPU_ISA=", want, ": this CPU (or build) cannot run it; it can run ",
                  supported_cpu_isas());
      return isa;
    }
  }
  TORCH_CHECK(false, "FIDEC_CPU_ISA=", want, ": unknown variant, expected auto, avx512, avx2 or baseline");
}

}  // namespace

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::Avx512:
      return "avx512";
    case CpuIsa::Avx2:
      return "avx2";
    case CpuIsa::Baseline:
      return "baseline";
  }
  return "?";
}

const char* supported_cpu_isas() {
  static const std::string names = [] {
    std::string s;
    for (CpuIsa isa : {CpuIsa::Avx512, CpuIsa::Avx2, CpuIsa::Baseline})
      if (cpu_has(isa)) s += (s.empty() ? "" : ",") + std::string(cpu_isa_name(isa));
    return s;
  }();
  return names.c_str();
}

CpuIsa active_cpu_isa() {
  static const CpuIsa isa = resolve();
  return isa;
}

}  // namespace fidec
