// Counter-based random numbers, identical on the CPU and on CUDA: the value
// for (seed, stream, counter) is a pure function, so any thread can draw any
// number in any order and a run is reproducible.
#pragma once
#include <cstdint>

#include "core/host_device.h"

namespace ox {

// SplitMix64 finaliser (Steele, Lea, Flood 2014): a bijective 64-bit mix.
OX_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// A 64-bit random word for (seed, stream, counter).
OX_HD uint64_t random_u64(uint64_t seed, uint64_t stream, uint64_t counter) {
  return mix64(mix64(seed ^ 0x9e3779b97f4a7c15ULL) + mix64(stream * 0xd1b54a32d192ed03ULL + 1) +
               counter * 0x9e3779b97f4a7c15ULL);
}

// Uniform integer in [0, bound) by Lemire's multiply-shift (bias < bound / 2^64).
OX_HD uint64_t random_below(uint64_t word, uint64_t bound) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(word, bound);
#else
  return static_cast<uint64_t>((static_cast<unsigned __int128>(word) * bound) >> 64);
#endif
}

}  // namespace ox
