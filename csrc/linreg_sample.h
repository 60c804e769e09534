// Row sampling for the stochastic methods of linreg fit, shared by the CPU and
// CUDA code so that both draw the same rows for the same (seed, step).
#pragma once
#include <cstdint>

#include "core/rng.h"

namespace ox {

// Draw k's candidate t, uniform in [0, j] with j = n − count + k; it does not depend on the
// earlier draws (cuda/linreg_fit.cu draws a warp's worth at once).
OX_HD int64_t linreg_sample_candidate(uint64_t seed, uint64_t step, int64_t n, int64_t count, int64_t k) {
  const int64_t j = n - count + k;
  return static_cast<int64_t>(
      random_below(random_u64(seed, step, static_cast<uint64_t>(k)), static_cast<uint64_t>(j + 1)));
}

// Floyd's algorithm: `count` distinct rows of [0, n), like random.sample.
// For k = 0..count-1, with j = n − count + k: draw t uniform in [0, j]; keep t
// unless already drawn, else keep j (which cannot have been drawn yet). Each
// draw is the counter-based word for (seed, stream = step, counter = k).
// Cost O(count²) comparisons per step (the batch is small next to n).
OX_HD void linreg_sample_rows(uint64_t seed, uint64_t step, int64_t n, int64_t count, int64_t* out) {
  for (int64_t k = 0; k < count; ++k) {
    const int64_t j = n - count + k;
    const int64_t t = linreg_sample_candidate(seed, step, n, count, k);
    bool seen = false;
    for (int64_t q = 0; q < k; ++q) seen |= (out[q] == t);
    out[k] = seen ? j : t;
  }
}

}  // namespace ox
