// The `reduce` alignment's KL over a block of aligned positions in one pass (see distilrubert/native.py).
//
// For each position (a column of the teacher's (teacher_vocab, c) logits / T) and its pooled student
// log-probabilities p (a row of (c, student_vocab)), with M the linear piece map (M[s, t] = weight of student
// piece s in teacher token t; no pieces = uncovered token, outside both softmaxes):
//
//   P = softmax over covered t of logits_t,  Q = softmax over covered t of (p @ M)_t
//   KL = sum_t P_t log P_t - p . (M P) + logsumexp_t (p @ M)_t
//   dKL/dp = M Q - M P
//
// Positions are processed in groups of kLanes, one group per task: the teacher row of a group is kLanes
// contiguous floats, the student scores of a piece are a kLanes-wide vector of a (student_vocab, kLanes)
// transposed copy, so every operation is one vector instruction per teacher token and piece. Both softmaxes use
// running shifts: a lane is rescaled only when a value exceeds its shift by more than kRescale, so there is no
// separate max pass and exp never overflows. Exponents are floored at kExpFloor (no denormals).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

constexpr int kLanes = 16;
typedef float vfloat __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vint __attribute__((vector_size(kLanes * sizeof(int32_t))));

constexpr float kRescale = 30.0f;   // e^30 * 120K tokens stays far below the float maximum
constexpr float kExpFloor = -87.0f;  // e^-87 is still a normal float

inline vfloat splat(float x) {
  vfloat v;
  for (int i = 0; i < kLanes; ++i) v[i] = x;
  return v;
}

inline vfloat vmax(vfloat a, vfloat b) { return a > b ? a : b; }

// exp on kLanes floats: 2^n * P(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2], P the Cephes
// degree-6 polynomial (relative error ~2e-7). x is clamped to [kExpFloor, 88].
inline vfloat vexp(vfloat x) {
  x = vmax(x, splat(kExpFloor));
  x = x < splat(88.0f) ? x : splat(88.0f);
#if defined(__AVX512F__)
  const vfloat n = (vfloat)_mm512_roundscale_ps((__m512)(x * splat(1.44269504088896341f)),
                                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  const vfloat n = __builtin_convertvector(
      __builtin_convertvector(x * splat(1.44269504088896341f) + (x >= splat(0.0f) ? splat(0.5f) : splat(-0.5f)),
                              vint),
      vfloat);
#endif
  vfloat r = x - n * splat(0.693359375f);
  r = r + n * splat(2.12194440e-4f);
  vfloat p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.0f);
#if defined(__AVX512F__)
  return (vfloat)_mm512_scalef_ps((__m512)p, (__m512)n);
#else
  const vint bits = (__builtin_convertvector(n, vint) + 127) << 23;
  vfloat scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
#endif
}

// Whether a > b in any lane (a compare and a mask test; the generic loop only without AVX).
inline bool any_greater(vfloat a, vfloat b) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask((__m512)a, (__m512)b, _CMP_GT_OQ) != 0;
#elif defined(__AVX__)
  __m256 lo_a, hi_a, lo_b, hi_b;
  std::memcpy(&lo_a, &a, 32), std::memcpy(&hi_a, reinterpret_cast<const char*>(&a) + 32, 32);
  std::memcpy(&lo_b, &b, 32), std::memcpy(&hi_b, reinterpret_cast<const char*>(&b) + 32, 32);
  return (_mm256_movemask_ps(_mm256_cmp_ps(lo_a, lo_b, _CMP_GT_OQ)) |
          _mm256_movemask_ps(_mm256_cmp_ps(hi_a, hi_b, _CMP_GT_OQ))) != 0;
#else
  bool out = false;
  for (int i = 0; i < kLanes; ++i) out |= a[i] > b[i];
  return out;
#endif
}

inline bool any_not_one(vfloat a) { return any_greater(a, splat(1.0f)) || any_greater(splat(1.0f), a); }

// Running-shift softmax state of one side over kLanes positions. Sums are accumulated in blocks of tokens
// (psum, pdot) that are added to the totals by flush(): a long sequential float sum drops the small terms that
// follow a dominant one, the blocked one keeps them (the same accuracy as torch's reductions in the tests).
struct Side {
  vfloat shift, sum, dot;  // dot: sum_t e_t (x_t - shift) (entropy numerator; teacher only)
  vfloat psum, pdot;       // the current block's part of sum and dot
  float* acc;              // (student_vocab, kLanes): sum_t e_t M[s, t]
  bool started = false;

  // Account for values x of one token (e = exp(x - shift)); returns e.
  template <bool kDot>
  inline vfloat add(vfloat x, int64_t sv) {
    if (!started) {
      shift = x, sum = dot = psum = pdot = splat(0.0f), started = true;
    } else {
      const vfloat limit = shift + splat(kRescale);
      if (any_greater(x, limit)) rescale(x > limit ? x : shift, sv);
    }
    const vfloat d = x - shift;
    const vfloat e = vexp(d);
    psum += e;
    if (kDot) pdot += e * vmax(d, splat(kExpFloor));
    return e;
  }

  inline void flush() {
    if (!started) return;
    sum += psum, dot += pdot;
    psum = pdot = splat(0.0f);
  }

  void rescale(vfloat new_shift, int64_t sv) {
    const vfloat factor = vexp(shift - new_shift);
    if (any_not_one(factor)) {
      dot = factor * (dot + (shift - new_shift) * sum);
      pdot = factor * (pdot + (shift - new_shift) * psum);
      sum *= factor;
      psum *= factor;
      for (int64_t s = 0; s < sv; ++s) {
        vfloat* a = reinterpret_cast<vfloat*>(acc + s * kLanes);
        *a *= factor;
      }
    }
    shift = new_shift;
  }
};

constexpr int kAhead = 32;  // teacher rows prefetched this many tokens ahead
constexpr int64_t kBlock = 64;  // tokens per partial sum (a power of 2)

// The state of one group of `lanes` <= kLanes positions.
struct Group {
  const float* logits;  // the group's first column of the (tv, c) logits
  int64_t stride;       // row stride of the logits
  int lanes;
  bool mean;
  const vfloat* z;  // (sv, kLanes) pooled scores, transposed
  vfloat* acc_t;    // (sv, kLanes) teacher mass
  vfloat* acc_s;    // (sv, kLanes) student mass
  int64_t sv;
  Side teacher, student;

  inline vfloat row(int64_t t) const {
    const float* src = logits + t * stride;
    vfloat x;
#if defined(__AVX512F__)
    if (lanes == kLanes) return (vfloat)_mm512_loadu_ps(src);
    return (vfloat)_mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << lanes) - 1), src);
#else
    if (lanes == kLanes) {
      std::memcpy(&x, src, sizeof(x));
    } else {
      x = splat(0.0f);
      for (int g = 0; g < lanes; ++g) x[g] = src[g];
    }
    return x;
#endif
  }

  // `count` tokens of `N` pieces each (N = 0: `n` pieces, a run-time count) whose logits are rows
  // first, first + 1, ...
  template <int N>
  void segment(int64_t first, const int32_t* pieces, int64_t count, int n) {
    const int np = N ? N : n;
    const vfloat w = splat(mean ? 1.0f / static_cast<float>(np) : 1.0f);
    for (int64_t i = 0; i < count; ++i) {
      if ((i & (kBlock - 1)) == 0) teacher.flush(), student.flush();
      const int32_t* own = pieces + i * np;
      __builtin_prefetch(logits + (first + i + kAhead) * stride);  // past the end: harmless, never faults
      const vfloat x = row(first + i);
      vfloat score = z[own[0]];
      for (int k = 1; k < np; ++k) score += z[own[k]];
      if (mean) score *= w;
      const vfloat et = teacher.add<true>(x, sv) * w;
      const vfloat es = student.add<false>(score, sv) * w;
      for (int k = 0; k < np; ++k) {
        acc_t[own[k]] += et;
        acc_s[own[k]] += es;
      }
    }
  }
};

// One group: every covered teacher token, segment by segment. Writes grad rows and loss[lane].
void group_kl(const float* logits, int64_t stride, const float* pooled, int64_t sv, int lanes, const int32_t* pieces,
              const int64_t* segments, int64_t n_segments, bool mean, float* grad, double* loss, float* work) {
  float* z = work;
  float* acc_t = work + sv * kLanes;
  float* acc_s = work + 2 * sv * kLanes;
  std::memset(work, 0, sizeof(float) * 3 * sv * kLanes);
  for (int g = 0; g < lanes; ++g)
    for (int64_t s = 0; s < sv; ++s) z[s * kLanes + g] = pooled[g * sv + s];
  Group group{logits, stride, lanes, mean, reinterpret_cast<const vfloat*>(z), reinterpret_cast<vfloat*>(acc_t),
              reinterpret_cast<vfloat*>(acc_s), sv, {}, {}};
  group.teacher.acc = acc_t, group.student.acc = acc_s;
  int64_t first = 0;
  for (int64_t seg = 0; seg < n_segments; ++seg) {
    const int n = static_cast<int>(segments[2 * seg]);
    const int64_t count = segments[2 * seg + 1];
    switch (n) {  // fixed piece counts unroll; tokens of the same count are contiguous, so no mispredictions
      case 1: group.segment<1>(first, pieces, count, n); break;
      case 2: group.segment<2>(first, pieces, count, n); break;
      case 3: group.segment<3>(first, pieces, count, n); break;
      case 4: group.segment<4>(first, pieces, count, n); break;
      case 5: group.segment<5>(first, pieces, count, n); break;
      case 6: group.segment<6>(first, pieces, count, n); break;
      default: group.segment<0>(first, pieces, count, n);
    }
    first += count, pieces += count * n;
  }
  group.teacher.flush(), group.student.flush();
  const Side& teacher = group.teacher;
  const Side& student = group.student;
  for (int g = 0; g < lanes; ++g) {
    const double t_sum = teacher.sum[g], s_sum = student.sum[g];
    const double entropy = teacher.dot[g] / t_sum - std::log(t_sum);  // sum_t P log P
    const double lse = std::log(s_sum) + student.shift[g];             // logsumexp_t (p @ M)_t
    double cross = 0.0;                                                // p . (M P)
    const float inv_t = static_cast<float>(1.0 / t_sum), inv_s = static_cast<float>(1.0 / s_sum);
    float* out = grad + g * sv;
    for (int64_t s = 0; s < sv; ++s) {
      const float mass_t = acc_t[s * kLanes + g] * inv_t;
      cross += static_cast<double>(z[s * kLanes + g]) * mass_t;
      out[s] = acc_s[s * kLanes + g] * inv_s - mass_t;
    }
    loss[g] = entropy - cross + lse;
  }
}

}  // namespace

// logits: (ntok, w) float32 with contiguous rows, the covered teacher tokens' logits / T in the map's order (row
// i = the i-th token of `segments`), w >= c; pooled: (c, sv) float32 contiguous; pieces: int32, the tokens'
// student pieces concatenated in that order; segments: (nseg, 2) int64 rows (piece count n, number of tokens),
// tokens sorted by n; grad: (c, sv) float32 contiguous, written. Returns the KL of each position, (c,) float64.
torch::Tensor reduce_kl(torch::Tensor logits, torch::Tensor pooled, torch::Tensor pieces, torch::Tensor segments,
                        bool mean, torch::Tensor grad) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == torch::kFloat && logits.stride(1) == 1,
              "reduce_kl: logits must be (tokens, w) float32 with contiguous rows");
  TORCH_CHECK(pooled.dim() == 2 && pooled.scalar_type() == torch::kFloat && pooled.is_contiguous(),
              "reduce_kl: pooled must be a contiguous (c, student_vocab) float32 tensor");
  TORCH_CHECK(pooled.size(0) <= logits.size(1), "reduce_kl: more pooled rows than logits columns");
  TORCH_CHECK(grad.sizes() == pooled.sizes() && grad.scalar_type() == torch::kFloat && grad.is_contiguous(),
              "reduce_kl: grad must be a contiguous float32 tensor shaped like pooled");
  TORCH_CHECK(pieces.scalar_type() == torch::kInt && segments.scalar_type() == torch::kLong && pieces.is_contiguous() &&
                  segments.is_contiguous() && segments.dim() == 2 && segments.size(1) == 2,
              "reduce_kl: the token map must be contiguous int32 pieces and (nseg, 2) int64 segments");
  TORCH_CHECK(segments.size(0) == 0 || segments.select(1, 1).sum().item<int64_t>() == logits.size(0),
              "reduce_kl: the segments' token count != logits rows");
  TORCH_CHECK(logits.device().is_cpu(), "reduce_kl: CPU tensors only");
  const int64_t c = pooled.size(0), sv = pooled.size(1);
  auto loss = torch::empty({c}, pooled.options().dtype(torch::kDouble));
  const float* lp = logits.data_ptr<float>();
  const float* pp = pooled.data_ptr<float>();
  const int64_t stride = logits.stride(0);
  const int32_t* pc = pieces.data_ptr<int32_t>();
  const int64_t* sg = segments.data_ptr<int64_t>();
  const int64_t n_segments = segments.size(0);
  float* gp = grad.data_ptr<float>();
  double* ls = loss.data_ptr<double>();
  const int64_t groups = (c + kLanes - 1) / kLanes;
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> work(3 * sv * kLanes + kLanes);
    float* aligned = work.data();
    while (reinterpret_cast<uintptr_t>(aligned) % 64) ++aligned;  // aligned vector accesses
    for (int64_t gi = begin; gi < end; ++gi) {
      const int64_t col = gi * kLanes;
      const int lanes = static_cast<int>(std::min<int64_t>(kLanes, c - col));
      group_kl(lp + col, stride, pp + col * sv, sv, lanes, pc, sg, n_segments, mean, gp + col * sv, ls + col, aligned);
    }
  });
  return loss;
}

namespace {

inline float hsum(vfloat v) {
  float out = 0.0f;
  for (int i = 0; i < kLanes; ++i) out += v[i];
  return out;
}

void check_rows(const torch::Tensor& x, const char* what) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.is_contiguous() && x.device().is_cpu(), what,
              " must be a contiguous 2-d float32 CPU tensor");
}

}  // namespace

// The student's pooled log-softmax (distilrubert.align._PooledLogSoftmax): lse[i] = logsumexp_j(x[i, j] * inv_t)
// of (n, v) logits, (n,) float32.
torch::Tensor row_logsumexp(torch::Tensor x, double inv_t) {
  check_rows(x, "row_logsumexp: logits");
  const int64_t n = x.size(0), v = x.size(1), full = v / kLanes * kLanes;
  auto out = torch::empty({n}, x.options());
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float scale = static_cast<float>(inv_t);
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* row = xp + i * v;
      vfloat high = splat(-INFINITY);
      for (int64_t j = 0; j < full; j += kLanes) {
        vfloat r;
        std::memcpy(&r, row + j, sizeof(r));
        high = vmax(high, r);
      }
      float top = -INFINITY;
      for (int i = 0; i < kLanes; ++i) top = std::max(top, high[i]);
      for (int64_t j = full; j < v; ++j) top = std::max(top, row[j]);
      top *= scale;  // inv_t > 0
      if (!std::isfinite(top)) {
        op[i] = top;
        continue;
      }
      vfloat acc = splat(0.0f);
      for (int64_t j = 0; j < full; j += kLanes) {
        vfloat r;
        std::memcpy(&r, row + j, sizeof(r));
        acc += vexp(r * splat(scale) - splat(top));
      }
      float total = hsum(acc);
      for (int64_t j = full; j < v; ++j) total += std::exp(row[j] * scale - top);
      op[i] = std::log(total) + top;
    }
  });
  return out;
}

// Its gradient: out[i, j] = (g[rows[i], j] - exp(x[i, j] * inv_t - lse[i]) * g_sum[rows[i]]) * inv_t, for (n, v)
// logits x, (m, v) incoming gradient g, (m,) row sums g_sum and (n,) int64 rows in [0, m).
torch::Tensor pooled_grad(torch::Tensor x, torch::Tensor lse, torch::Tensor g, torch::Tensor g_sum, torch::Tensor rows,
                          double inv_t) {
  check_rows(x, "pooled_grad: logits");
  check_rows(g, "pooled_grad: grad");
  TORCH_CHECK(g.size(1) == x.size(1) && lse.size(0) == x.size(0) && rows.size(0) == x.size(0) &&
                  g_sum.size(0) == g.size(0) && lse.is_contiguous() && g_sum.is_contiguous() && rows.is_contiguous() &&
                  lse.scalar_type() == torch::kFloat && g_sum.scalar_type() == torch::kFloat &&
                  rows.scalar_type() == torch::kLong,
              "pooled_grad: shapes or dtypes do not match");
  const int64_t n = x.size(0), v = x.size(1), m = g.size(0), full = v / kLanes * kLanes;
  auto out = torch::empty_like(x);
  const float *xp = x.data_ptr<float>(), *lp = lse.data_ptr<float>(), *gp = g.data_ptr<float>(),
              *sp = g_sum.data_ptr<float>();
  const int64_t* rp = rows.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const float scale = static_cast<float>(inv_t);
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = rp[i];
      TORCH_CHECK(r >= 0 && r < m, "pooled_grad: row index out of range");
      const float* xi = xp + i * v;
      const float* gi = gp + r * v;
      float* oi = op + i * v;
      const float shift = lp[i], mass = sp[r];
      for (int64_t j = 0; j < full; j += kLanes) {
        vfloat xv, gv;
        std::memcpy(&xv, xi + j, sizeof(xv));
        std::memcpy(&gv, gi + j, sizeof(gv));
        const vfloat o = (gv - vexp(xv * splat(scale) - splat(shift)) * splat(mass)) * splat(scale);
        std::memcpy(oi + j, &o, sizeof(o));
      }
      for (int64_t j = full; j < v; ++j) oi[j] = (gi[j] - std::exp(xi[j] * scale - shift) * mass) * scale;
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("reduce_kl", &reduce_kl, "the reduce alignment's KL over a block of positions, with its gradient");
  m.def("row_logsumexp", &row_logsumexp, "logsumexp of each row of x * inv_t");
  m.def("pooled_grad", &pooled_grad, "gradient of the pooled log-softmax");
}
