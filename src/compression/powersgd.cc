// PowerSGD's phases (powersgd.h): dense loops over the rows x cols view of M, streaming M
// row by row; the factors are small (rank columns) and stay in cache.
#include "compression/powersgd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "compression/codec_ops.h"
#include "skyring/error.h"

namespace skyring::compression {
namespace {

// Elements of row i that are real, not padding.
std::size_t rowLength(const PowerSgdShape& s, std::size_t i) noexcept {
  return std::min(s.cols, s.count - i * s.cols);
}

void checkSize(std::size_t got, std::size_t want, const char* what) {
  SKYRING_CHECK_ARG(got == want, {}, "powersgd ", what, " has ", got, " elements, need ", want);
}

}  // namespace

PowerSgdShape powerSgdShape(std::size_t count, std::size_t rank) noexcept {
  PowerSgdShape s;
  s.count = count;
  if (count == 0) return s;
  std::size_t c = static_cast<std::size_t>(std::sqrt(static_cast<double>(count)));
  while (c * c < count)
    ++c;
  while (c > 1 && (c - 1) * (c - 1) >= count)
    --c;
  s.cols = c;
  s.rows = (count + c - 1) / c;
  s.rank = std::min({rank, s.rows, s.cols});
  return s;
}

PowerSgdShape powerSgdMatrix(std::size_t rows, std::size_t cols, std::size_t rank) noexcept {
  return {rows * cols, rows, cols, std::min({rank, rows, cols})};
}

void powerSgdComputeP(std::span<const float> input, bool errorFeedback, const PowerSgdShape& s,
                      CompressorState& state, std::span<float> p) {
  checkSize(input.size(), s.count, "input");
  checkSize(p.size(), s.pSize(), "P");
  auto& m = state.residual;
  if (!errorFeedback || m.size() != s.count) m.assign(s.count, 0.0f);
  for (std::size_t i = 0; i < s.count; ++i)
    m[i] += input[i];
  const std::size_t r = s.rank;
  if (state.q.size() != s.qSize()) state.q.assign(s.qSize(), 0.0f);
  // Any Q of full column rank works: uniform [-1, 1) from the shared seed. A column that
  // the warm start left at zero (M of rank below r) is redrawn, or it would stay zero.
  for (std::size_t j = 0; j < r; ++j) {
    bool zero = true;
    for (std::size_t c = 0; c < s.cols && zero; ++c)
      zero = state.q[c * r + j] == 0.0f;
    if (!zero) continue;
    const std::uint64_t key = ops::streamKey(state.seed, j);
    for (std::size_t c = 0; c < s.cols; ++c)
      state.q[c * r + j] = 2.0f * ops::uniform01(key, c) - 1.0f;
  }
  float acc[kMaxRank];
  for (std::size_t i = 0; i < s.rows; ++i) {
    std::fill_n(acc, r, 0.0f);
    const float* row = m.data() + i * s.cols;
    for (std::size_t c = 0, len = rowLength(s, i); c < len; ++c) {
      const float x = row[c];
      const float* qc = state.q.data() + c * r;
      for (std::size_t j = 0; j < r; ++j)
        acc[j] += x * qc[j];
    }
    std::copy_n(acc, r, p.data() + i * r);
  }
}

void powerSgdComputeQ(const PowerSgdShape& s, CompressorState& state, std::span<float> p,
                      std::span<float> q) {
  checkSize(p.size(), s.pSize(), "P");
  checkSize(q.size(), s.qSize(), "Q");
  checkSize(state.residual.size(), s.count, "M (state without phase 1?)");
  const std::size_t r = s.rank;
  // Modified Gram-Schmidt on the columns of P, dot products in double: P is small. Each
  // column is projected out twice ("twice is enough"): when M has rank below r, a column
  // is rounding noise after one pass, with a large share along the earlier columns.
  for (std::size_t j = 0; j < r; ++j) {
    for (int pass = 0; pass < 2; ++pass) {
      for (std::size_t l = 0; l < j; ++l) {
        double dot = 0;
        for (std::size_t i = 0; i < s.rows; ++i)
          dot += static_cast<double>(p[i * r + j]) * p[i * r + l];
        for (std::size_t i = 0; i < s.rows; ++i)
          p[i * r + j] -= static_cast<float>(dot) * p[i * r + l];
      }
    }
    double norm = 0;
    for (std::size_t i = 0; i < s.rows; ++i)
      norm += static_cast<double>(p[i * r + j]) * p[i * r + j];
    norm = std::sqrt(norm);
    // A zero column stays zero instead of dividing by zero; phase 1 redraws its Q column.
    const float inv = norm > 1e-30 ? static_cast<float>(1.0 / norm) : 0.0f;
    for (std::size_t i = 0; i < s.rows; ++i)
      p[i * r + j] *= inv;
  }
  std::fill(q.begin(), q.end(), 0.0f);
  const float* m = state.residual.data();
  for (std::size_t i = 0; i < s.rows; ++i) {
    const float* row = m + i * s.cols;
    const float* pi = p.data() + i * r;
    for (std::size_t c = 0, len = rowLength(s, i); c < len; ++c) {
      float* qc = q.data() + c * r;
      for (std::size_t j = 0; j < r; ++j)
        qc[j] += row[c] * pi[j];
    }
  }
}

void powerSgdExpand(const PowerSgdShape& s, std::span<const float> p, std::span<const float> q,
                    std::span<float> out) noexcept {
  const std::size_t r = s.rank;
  for (std::size_t i = 0; i < s.rows; ++i) {
    const float* pi = p.data() + i * r;
    float* row = out.data() + i * s.cols;
    for (std::size_t c = 0, len = rowLength(s, i); c < len; ++c) {
      const float* qc = q.data() + c * r;
      float x = 0.0f;
      for (std::size_t j = 0; j < r; ++j)
        x += pi[j] * qc[j];
      row[c] = x;
    }
  }
}

void powerSgdDecompress(bool errorFeedback, const PowerSgdShape& s, CompressorState& state,
                        std::span<const float> p, std::span<const float> q, std::span<float> out) {
  checkSize(p.size(), s.pSize(), "P");
  checkSize(q.size(), s.qSize(), "Q");
  checkSize(out.size(), s.count, "output");
  checkSize(state.residual.size(), s.count, "M (state without phase 1?)");
  powerSgdExpand(s, p, q, out);
  auto& m = state.residual;
  if (errorFeedback) {
    for (std::size_t i = 0; i < s.count; ++i)
      m[i] -= out[i];
  } else {
    std::fill(m.begin(), m.end(), 0.0f);
  }
  state.q.assign(q.begin(), q.end());
}

}  // namespace skyring::compression
