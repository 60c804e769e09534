// OX_HD marks a function defined in a header for both the CPU and CUDA code.
//
// On the host it has internal linkage (static): the CPU kernels are compiled once per ISA
// (scalar, AVX2, AVX-512) from the same sources, and an `inline` function used by all three
// would be one weak symbol, so the linker could hand the scalar build the AVX-512 copy.
#pragma once

#if defined(__CUDACC__)
#define OX_HD __host__ __device__ __forceinline__
#else
#define OX_HD static inline
#endif
