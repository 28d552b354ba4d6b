// chunkattn/softmax_state.h — the online-softmax state and its merge rule, shared by phase 1,
// phase 2, split-KV merges and the CPU target.
//
// A state summarizes attention of one query over a set of tokens: m = max score, l = sum of
// exp(s - m), and (kept by the caller, D floats) o = sum of exp(s - m) * v. The empty state
// has m = -inf, l = 0. A partial stored in global memory is (o / l, lse = m + log l).
#ifndef CHUNKATTN_SOFTMAX_STATE_H_
#define CHUNKATTN_SOFTMAX_STATE_H_

#include <math.h>

#include "chunkattn/variant.h"

namespace ca {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct SoftmaxState {
  float m = -INFINITY;
  float l = 0.f;

  CA_HD bool empty() const { return l == 0.f; }

  // Folds in a state (m_b, l_b). Returns the factors the caller applies to its o vectors:
  // o = o * scale_self + o_b * scale_other. Empty states on either side are exact.
  struct Rescale {
    float self, other;
  };
  CA_HD Rescale merge(float m_b, float l_b) {
    if (l_b == 0.f) return {1.f, 0.f};
    if (l == 0.f) {
      m = m_b;
      l = l_b;
      return {0.f, 1.f};
    }
    const float m_new = m > m_b ? m : m_b;
    const float a = expf(m - m_new), b = expf(m_b - m_new);
    m = m_new;
    l = l * a + l_b * b;
    return {a, b};
  }

  // Merges a stored partial (o_b already divided by l_b, lse_b = m_b + log l_b).
  CA_HD Rescale merge_lse(float lse_b) {
    if (lse_b == -INFINITY) return {1.f, 0.f};
    return merge(lse_b, 1.f);
  }

  // Log-sum-exp of the state; -inf when empty.
  CA_HD float lse() const { return l == 0.f ? -INFINITY : m + logf(l); }

  // Factor turning the accumulated o into the output: 1 / l, or 0 for an empty state.
  CA_HD float inv_l() const { return l == 0.f ? 0.f : 1.f / l; }
};

}  // namespace ca

#endif  // CHUNKATTN_SOFTMAX_STATE_H_
