#include "core/isa.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "core/errors.h"

namespace ox {

Isa best_supported_isa() {
  static const Isa best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
      return Isa::avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
    return Isa::scalar;
  }();
  return best;
}

static Isa parse_isa(const char* name) {
  if (!std::strcmp(name, "auto")) return best_supported_isa();
  if (!std::strcmp(name, "scalar")) return Isa::scalar;
  if (!std::strcmp(name, "avx2")) return Isa::avx2;
  if (!std::strcmp(name, "avx512")) return Isa::avx512;
  value_error("set_isa: argument 'name' must be 'auto', 'scalar', 'avx2' or 'avx512', got '", name, "'");
}

static std::atomic<int> g_isa{-1};

Isa active_isa() {
  int isa = g_isa.load(std::memory_order_relaxed);
  if (isa < 0) {
    const char* env = std::getenv("OXKERNELS_ISA");
    Isa chosen = best_supported_isa();
    if (env && *env) {
      Isa wanted = parse_isa(env);
      if (static_cast<int>(wanted) < static_cast<int>(chosen)) chosen = wanted;
    }
    isa = static_cast<int>(chosen);
    g_isa.store(isa, std::memory_order_relaxed);
  }
  return static_cast<Isa>(isa);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

void set_isa(const char* name) {
  Isa wanted = parse_isa(name);
  if (static_cast<int>(wanted) > static_cast<int>(best_supported_isa()))
    value_error("set_isa: this CPU does not support ", isa_name(wanted), " (best: ",
                isa_name(best_supported_isa()), ")");
  g_isa.store(static_cast<int>(wanted), std::memory_order_relaxed);
}

}  // namespace ox
