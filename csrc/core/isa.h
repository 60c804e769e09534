// Run-time choice of the CPU instruction set.
//
// Every file in csrc/cpu/ is compiled three times (CMakeLists.txt), with
// OX_ISA defined to scalar, avx2 or avx512 and matching compiler flags; its
// kernels live in namespace ox::OX_ISA. The entry points (validation and
// dispatch) sit in the same file inside `#if OX_ISA_IS_scalar`, so they are
// compiled once, with baseline flags, and call OX_ISA_DISPATCH.
//
// Rules for kernel code (the part compiled three times): take pointers and
// sizes, not Views; keep helpers `static` or in the ox::OX_ISA namespace; no
// std containers or out-of-line std templates (the linker would keep one copy,
// possibly the AVX-512 one, for every caller).
#pragma once

namespace ox {

enum class Isa { scalar = 0, avx2 = 1, avx512 = 2 };

Isa active_isa();              // the set in use: the best supported, or what set_isa chose
Isa best_supported_isa();      // the best this CPU runs
const char* isa_name(Isa isa);
void set_isa(const char* name);  // "scalar", "avx2", "avx512" or "auto"; throws if unsupported

}  // namespace ox

// Declare a kernel for all three instruction sets.
#define OX_ISA_DECLARE(ret, name, params) \
  namespace ox { namespace scalar { ret name params; } namespace avx2 { ret name params; } \
                 namespace avx512 { ret name params; } }

// Call the kernel compiled for the active instruction set.
#define OX_ISA_DISPATCH(name, ...)                                        \
  do {                                                                    \
    switch (::ox::active_isa()) {                                         \
      case ::ox::Isa::avx512: ::ox::avx512::name(__VA_ARGS__); break;     \
      case ::ox::Isa::avx2: ::ox::avx2::name(__VA_ARGS__); break;         \
      default: ::ox::scalar::name(__VA_ARGS__); break;                    \
    }                                                                     \
  } while (0)
