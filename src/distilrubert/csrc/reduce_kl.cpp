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
// separate max pass and exp never overflows. The loop works in base 2 (logits and scores arrive multiplied by
// log2 e, so each exponential is one exp2); denormals are flushed to zero (FTZ/DAZ) while it runs on x86,
// elsewhere exponents are floored at kExpFloor.
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

#define HOT inline __attribute__((always_inline))  // the inner loop must be one function, state in registers

constexpr int kLanes = 16;
typedef float vfloat __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vint __attribute__((vector_size(kLanes * sizeof(int32_t))));
typedef double vdouble __attribute__((vector_size(kLanes / 2 * sizeof(double))));

constexpr float kRescale = 43.0f;   // in log2 units: 2^43 * 120K tokens stays far below the float maximum
constexpr float kExpFloor = -125.0f;  // 2^-125 is still a normal float
constexpr float kLog2e = 1.44269504088896341f;
constexpr double kLn2 = 0.693147180559945309;
#if defined(__SSE__)
constexpr bool kFloor = false;  // FTZ/DAZ (FlushDenormals) instead
#else
constexpr bool kFloor = true;
#endif
constexpr int kAhead = 32;           // teacher rows prefetched this many tokens ahead
constexpr int64_t kBlock = 64;       // tokens per partial sum
constexpr int kV = 2;                // vectors per group: a row read is kV adjacent cache lines
constexpr int kGroup = kV * kLanes;  // positions per group

HOT vfloat splat(float x) {
  vfloat v;
  for (int i = 0; i < kLanes; ++i) v[i] = x;
  return v;
}

HOT vfloat vmax(vfloat a, vfloat b) {
#if defined(__AVX512F__)
  return (vfloat)_mm512_max_ps((__m512)a, (__m512)b);
#else
  return a > b ? a : b;
#endif
}

// 2^x for x <= 127 (Cephes exp2f: n = round(x), r = x - n in [-1/2, 1/2], 2^r = 1 + r P(r); relative error
// ~1e-7). Below -126 the result is denormal or 0 (flushed to 0 under FTZ).
HOT vfloat vexp2(vfloat x) {
#if defined(__AVX512F__)
  const vfloat n = (vfloat)_mm512_roundscale_ps((__m512)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  x = vmax(x, splat(kExpFloor));
  const vfloat n = __builtin_convertvector(
      __builtin_convertvector(x + (x >= splat(0.0f) ? splat(0.5f) : splat(-0.5f)), vint), vfloat);
#endif
  const vfloat r = x - n;
  vfloat p = splat(1.535336188319500e-4f);
  p = p * r + splat(1.339887440266574e-3f);
  p = p * r + splat(9.618437357674640e-3f);
  p = p * r + splat(5.550332471162809e-2f);
  p = p * r + splat(2.402264791363012e-1f);
  p = p * r + splat(6.931472028550421e-1f);
  p = p * r + splat(1.0f);
#if defined(__AVX512F__)
  return (vfloat)_mm512_scalef_ps((__m512)p, (__m512)n);
#else
  const vint bits = (__builtin_convertvector(n, vint) + 127) << 23;
  vfloat scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
#endif
}

// e^x for x <= 88, floored at e^-86 (the pooled log-softmax kernels).
HOT vfloat vexp(vfloat x) { return vexp2(vmax(x * splat(kLog2e), splat(kExpFloor))); }

// Floors an exponent where denormals are not flushed (a no-op on x86, which flushes them).
HOT vfloat floored(vfloat x) { return kFloor ? vmax(x, splat(kExpFloor)) : x; }

// Denormals flushed to zero (and read as zero) in this scope: exponents far below the shift then cost nothing.
struct FlushDenormals {
#if defined(__SSE__)
  unsigned saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | 0x8040); }
  ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

// Whether a > b in any lane (a compare and a mask test; the generic loop only without AVX).
HOT bool any_greater(vfloat a, vfloat b) {
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

// One side's softmax over the tokens, per lane: e_t = exp(x_t - shift), sum = sum_t e_t, dot = sum_t e_t (x_t -
// shift) (the entropy's numerator; teacher only), acc[s] = sum_t M[s, t] e_t. The shift is a running one: the
// first token's value, raised (and everything rescaled) only when a value exceeds it by more than kRescale.
struct Side {
  vfloat shift[kV], sum[kV], dot[kV];
  vfloat* acc;  // (student_vocab, kV) vectors

  // Raise the shift of vector v's lanes where x > shift + kRescale to x; the partial sums are rescaled too.
  __attribute__((noinline)) void raise(int v, vfloat x, vfloat& psum, vfloat& pdot, int64_t sv) {
    const vfloat up = x > shift[v] + splat(kRescale) ? x : shift[v];
    const vfloat drop = shift[v] - up;  // <= 0
    const vfloat factor = vexp2(floored(drop));
    dot[v] = factor * (dot[v] + drop * sum[v]), sum[v] *= factor;
    pdot = factor * (pdot + drop * psum), psum *= factor;
    for (int64_t s = 0; s < sv; ++s) acc[s * kV + v] *= factor;
    shift[v] = up;
  }
};

// The state of one group of `lanes` <= kGroup positions: kV vectors of kLanes.
struct Group {
  const float* logits;  // the group's first column of the (tokens, w) logits
  int64_t stride;       // row stride of the logits
  int lanes;
  const vfloat* z;  // (sv, kV) pooled scores of the group's positions, transposed
  int64_t sv;
  Side teacher, student;

  HOT vfloat row(int64_t t, int v) const {
    const float* src = logits + t * stride + v * kLanes;
    const int have = lanes - v * kLanes;  // valid lanes in this vector
#if defined(__AVX512F__)
    if (have >= kLanes) return (vfloat)_mm512_loadu_ps(src);
    return (vfloat)_mm512_maskz_loadu_ps(have > 0 ? static_cast<__mmask16>((1u << have) - 1) : 0, src);
#else
    vfloat x = splat(0.0f);
    if (have >= kLanes) {
      std::memcpy(&x, src, sizeof(x));
    } else {
      for (int g = 0; g < have; ++g) x[g] = src[g];
    }
    return x;
#endif
  }

  template <int N, bool kMean>
  HOT vfloat score(const int32_t* own, int np, int v) const {
    vfloat out = z[own[0] * kV + v];
    for (int k = 1; k < (N ? N : np); ++k) out += z[own[k] * kV + v];
    if (kMean) out *= splat(1.0f / static_cast<float>(N ? N : np));
    return out;
  }

  // `count` tokens of `N` pieces each (N = 0: `n` pieces, a run-time count) whose logits are rows first, first + 1,
  // ...; the shifts, limits and partial sums stay in registers. kRaiseStudent: whether a student score can exceed
  // its shift (not when the shift is the largest pooled score, see group_kl).
  template <int N, bool kMean, bool kRaiseStudent>
  void segment(int64_t first, const int32_t* pieces, int64_t count, int n) {
    const int np = N ? N : n;
    const vfloat w = splat(kMean ? 1.0f / static_cast<float>(np) : 1.0f);
    const vfloat margin = splat(kRescale);
    vfloat t_limit[kV], s_limit[kV];
    for (int v = 0; v < kV; ++v) t_limit[v] = teacher.shift[v] + margin, s_limit[v] = student.shift[v] + margin;
    vfloat* acc_t = teacher.acc;
    vfloat* acc_s = student.acc;
    for (int64_t start = 0; start < count; start += kBlock) {
      const int64_t stop = std::min(count, start + kBlock);
      vfloat t_sum[kV], t_dot[kV], s_sum[kV], s_dot[kV];
      for (int v = 0; v < kV; ++v) t_sum[v] = t_dot[v] = s_sum[v] = s_dot[v] = splat(0.0f);
      for (int64_t i = start; i < stop; ++i) {
        const int32_t* own = pieces + i * np;
        for (int v = 0; v < kV; ++v)  // past the end: harmless, never faults
          __builtin_prefetch(logits + (first + i + kAhead) * stride + v * kLanes);
        vfloat et[kV], es[kV];
        for (int v = 0; v < kV; ++v) {
          const vfloat x = row(first + i, v);
          const vfloat y = score<N, kMean>(own, np, v);
          if (__builtin_expect(any_greater(x, t_limit[v]), 0)) {
            teacher.raise(v, x, t_sum[v], t_dot[v], sv);
            t_limit[v] = teacher.shift[v] + margin;
          }
          if (kRaiseStudent && __builtin_expect(any_greater(y, s_limit[v]), 0)) {
            student.raise(v, y, s_sum[v], s_dot[v], sv);
            s_limit[v] = student.shift[v] + margin;
          }
          const vfloat dt = floored(x - (t_limit[v] - margin));
          et[v] = vexp2(dt);
          t_sum[v] += et[v], t_dot[v] += et[v] * dt;
          es[v] = vexp2(floored(y - (s_limit[v] - margin)));
          s_sum[v] += es[v];
          if (kMean) et[v] *= w, es[v] *= w;
        }
        for (int k = 0; k < np; ++k) {
          vfloat* at = acc_t + own[k] * kV;
          vfloat* as = acc_s + own[k] * kV;
          for (int v = 0; v < kV; ++v) at[v] += et[v], as[v] += es[v];
        }
      }
      for (int v = 0; v < kV; ++v) teacher.sum[v] += t_sum[v], teacher.dot[v] += t_dot[v], student.sum[v] += s_sum[v];
    }
  }
};

template <bool kMean, bool kRaiseStudent>
void run_segment(Group& group, int64_t first, const int32_t* pieces, int64_t count, int n) {
  switch (n) {  // fixed piece counts unroll; tokens of the same count are contiguous, so no mispredictions
    case 1: return group.segment<1, kMean, kRaiseStudent>(first, pieces, count, n);
    case 2: return group.segment<2, kMean, kRaiseStudent>(first, pieces, count, n);
    case 3: return group.segment<3, kMean, kRaiseStudent>(first, pieces, count, n);
    case 4: return group.segment<4, kMean, kRaiseStudent>(first, pieces, count, n);
    case 5: return group.segment<5, kMean, kRaiseStudent>(first, pieces, count, n);
    case 6: return group.segment<6, kMean, kRaiseStudent>(first, pieces, count, n);
    default: return group.segment<0, kMean, kRaiseStudent>(first, pieces, count, n);
  }
}

// One group: every covered teacher token, segment by segment. Writes grad rows and loss[lane].
void group_kl(const float* logits, int64_t stride, const float* pooled, int64_t sv, int lanes, const int32_t* pieces,
              const int64_t* segments, int64_t n_segments, bool mean, float* grad, double* loss, float* work) {
  float* z = work;  // work: 3 (sv, kGroup) arrays
  float* acc_t = work + sv * kGroup;
  float* acc_s = work + 2 * sv * kGroup;
  std::memset(acc_t, 0, sizeof(float) * 2 * sv * kGroup);
  {  // z[s, g] = pooled[g, s] * log2(e) (base 2), through a cache-resident tile; position g is lane g % kLanes of
     // vector g / kLanes, absent positions are 0
    constexpr int kTile = 64;
    alignas(64) float tile[kTile * kGroup];
    std::memset(tile, 0, sizeof(tile));
    for (int64_t s0 = 0; s0 < sv; s0 += kTile) {
      const int m = static_cast<int>(std::min<int64_t>(kTile, sv - s0));
      for (int g = 0; g < lanes; ++g) {
        const float* row = pooled + g * sv + s0;
        for (int i = 0; i < m; ++i) tile[i * kGroup + g] = row[i];
      }
      for (int i = 0; i < m * kGroup; ++i) z[s0 * kGroup + i] = tile[i] * kLog2e;
    }
  }
  Group group{logits, stride, lanes, reinterpret_cast<const vfloat*>(z), sv, {}, {}};
  group.teacher.acc = reinterpret_cast<vfloat*>(acc_t), group.student.acc = reinterpret_cast<vfloat*>(acc_s);
  // Student shift: the largest pooled score of each position. Every mapped score (a sum or mean of pooled
  // log-probabilities, all <= 0) is at most that, so the student side never needs a raise; only if a position's
  // scores all lie far below it (the partition sum then underflows) is the group redone with running shifts.
  vfloat top[kV];
  for (int v = 0; v < kV; ++v) top[v] = splat(-INFINITY);
  for (int64_t s = 0; s < sv; ++s)
    for (int v = 0; v < kV; ++v) top[v] = vmax(top[v], group.z[s * kV + v]);
  for (bool raise_student : {false, true}) {
    for (int v = 0; v < kV; ++v) {
      group.teacher.sum[v] = group.teacher.dot[v] = group.student.sum[v] = group.student.dot[v] = splat(0.0f);
      group.teacher.shift[v] = splat(0.0f);
      group.student.shift[v] = raise_student ? splat(0.0f) : top[v];
      if (n_segments > 0) {  // the first token's values: shifts no greater than the maxima
        const int n = static_cast<int>(segments[0]);
        group.teacher.shift[v] = group.row(0, v);
        if (raise_student)
          group.student.shift[v] = mean ? group.score<0, true>(pieces, n, v) : group.score<0, false>(pieces, n, v);
      }
    }
    if (raise_student) std::memset(acc_t, 0, sizeof(float) * 2 * sv * kGroup);
    int64_t first = 0;
    const int32_t* own = pieces;
    for (int64_t seg = 0; seg < n_segments; ++seg) {
      const int n = static_cast<int>(segments[2 * seg]);
      const int64_t count = segments[2 * seg + 1];
      if (mean) {
        raise_student ? run_segment<true, true>(group, first, own, count, n)
                      : run_segment<true, false>(group, first, own, count, n);
      } else {
        raise_student ? run_segment<false, true>(group, first, own, count, n)
                      : run_segment<false, false>(group, first, own, count, n);
      }
      first += count, own += count * n;
    }
    bool underflow = false;  // a partition sum below 2^-60: most of its terms were flushed to zero
    for (int g = 0; g < lanes; ++g) underflow |= !(group.student.sum[g / kLanes][g % kLanes] >= 0x1p-60f);
    if (!underflow) break;
  }
  // The gradient rows and the cross terms p . (M P), a tile of kTile student tokens at a time: vectorised over
  // the lanes (products in float, sums in double), then transposed through `tile` into the (position, sv) rows.
  const Side& teacher = group.teacher;
  const Side& student = group.student;
  const vfloat* at = teacher.acc;
  const vfloat* as = student.acc;
  const vfloat* zv = group.z;
  vfloat inv_t[kV], inv_s[kV];
  vdouble cross[2 * kV];
  for (int v = 0; v < kV; ++v) {
    inv_t[v] = splat(1.0f) / teacher.sum[v], inv_s[v] = splat(1.0f) / student.sum[v];
    cross[2 * v] = cross[2 * v + 1] = vdouble{};
  }
  constexpr int kTile = 64;
  alignas(64) float tile[kTile * kGroup];
  for (int64_t s0 = 0; s0 < sv; s0 += kTile) {
    const int m = static_cast<int>(std::min<int64_t>(kTile, sv - s0));
    for (int i = 0; i < m; ++i) {
      const int64_t s = s0 + i;
      for (int v = 0; v < kV; ++v) {
        const vfloat mass_t = at[s * kV + v] * inv_t[v];
        const vfloat product = zv[s * kV + v] * mass_t;
        cross[2 * v] += __builtin_convertvector(
            __builtin_shufflevector(product, product, 0, 1, 2, 3, 4, 5, 6, 7), vdouble);
        cross[2 * v + 1] += __builtin_convertvector(
            __builtin_shufflevector(product, product, 8, 9, 10, 11, 12, 13, 14, 15), vdouble);
        const vfloat out = as[s * kV + v] * inv_s[v] - mass_t;
        std::memcpy(tile + i * kGroup + v * kLanes, &out, sizeof(out));
      }
    }
    for (int g = 0; g < lanes; ++g) {
      float* row = grad + g * sv + s0;
      for (int i = 0; i < m; ++i) row[i] = tile[i * kGroup + g];
    }
  }
  for (int g = 0; g < lanes; ++g) {
    const int v = g / kLanes, l = g % kLanes;
    const double t_sum = teacher.sum[v][l], s_sum = student.sum[v][l];
    // Back to natural units: log P_t = ln 2 (x_t - shift) - ln(sum) for base-2 logits x.
    const double entropy = kLn2 * teacher.dot[v][l] / t_sum - std::log(t_sum);  // sum_t P log P
    const double lse = std::log(s_sum) + kLn2 * student.shift[v][l];             // logsumexp_t (p @ M)_t
    loss[g] = entropy - kLn2 * cross[2 * v + l / 8][l % 8] + lse;               // cross: base 2
  }
}

}  // namespace

// logits: (ntok, w) float32 with contiguous rows: the covered teacher tokens' logits x log2(e) / T (base 2), row i
// for the i-th token of `segments`, w >= c; pooled: (c, sv) float32 contiguous, the student's pooled
// log-probabilities (natural log); pieces: int32, the tokens' student pieces concatenated in that order;
// segments: (nseg, 2) int64 rows (piece count n, number of tokens), tokens sorted by n; grad: (c, sv) float32
// contiguous, written. Returns the KL of each position, (c,) float64.
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
  const int64_t groups = (c + kGroup - 1) / kGroup;
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> work(3 * sv * kGroup + kLanes);
    float* aligned = work.data();
    while (reinterpret_cast<uintptr_t>(aligned) % 64) ++aligned;  // aligned vector accesses
    for (int64_t gi = begin; gi < end; ++gi) {
      const int64_t col = gi * kGroup;
      const int lanes = static_cast<int>(std::min<int64_t>(kGroup, c - col));
      FlushDenormals ftz;
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

// lse[i] = logsumexp_j(x[i, j] * inv_t) of (n, v) logits, (n,) float32.
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

// The student's side of the fused native KL (distilrubert.align._NativeReduceKL), forward: for (P, v) piece logits
// x and rows (P,) int64 (the aligned position of each piece, n = none), writes out[r] = the pooling (sum, or mean
// when `mean`) over the pieces of r of log_softmax(x_i * inv_t), for r < n (n = out.size(0)); rows without pieces
// get zeros. Returns (lse (P,) float32 of x * inv_t, counts (n,) float32 pieces per row).
std::vector<torch::Tensor> pooled_forward(torch::Tensor x, torch::Tensor rows, double inv_t, bool mean,
                                          torch::Tensor out) {
  check_rows(x, "pooled_forward: logits");
  check_rows(out, "pooled_forward: out");
  TORCH_CHECK(rows.dim() == 1 && rows.size(0) == x.size(0) && rows.scalar_type() == torch::kLong && rows.is_contiguous(),
              "pooled_forward: rows must be (pieces,) int64");
  TORCH_CHECK(out.size(1) == x.size(1), "pooled_forward: out and logits widths differ");
  const int64_t pieces = x.size(0), v = x.size(1), n = out.size(0);
  auto lse = row_logsumexp(x, inv_t);
  auto counts = torch::zeros({n}, x.options());
  const int64_t* rp = rows.data_ptr<int64_t>();
  std::vector<int64_t> start(n + 1, 0), order(pieces);
  for (int64_t i = 0; i < pieces; ++i) {  // counting sort of the pieces by row
    TORCH_CHECK(rp[i] >= 0 && rp[i] <= n, "pooled_forward: row index out of range");
    if (rp[i] < n) ++start[rp[i] + 1];
  }
  for (int64_t r = 0; r < n; ++r) start[r + 1] += start[r];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < pieces; ++i)
      if (rp[i] < n) order[fill[rp[i]]++] = i;
  }
  const float* xp = x.data_ptr<float>();
  const float* lp = lse.data_ptr<float>();
  float* op = out.data_ptr<float>();
  float* cp = counts.data_ptr<float>();
  const float scale = static_cast<float>(inv_t);
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* o = op + r * v;
      const int64_t count = start[r + 1] - start[r];
      cp[r] = static_cast<float>(count);
      float shift = 0.0f;
      for (int64_t k = start[r]; k < start[r + 1]; ++k) shift += lp[order[k]];
      const float weight = mean && count ? 1.0f / static_cast<float>(count) : 1.0f;
      for (int64_t j = 0; j < v; ++j) o[j] = -shift;
      for (int64_t k = start[r]; k < start[r + 1]; ++k) {
        const float* xi = xp + order[k] * v;
        for (int64_t j = 0; j < v; ++j) o[j] += xi[j] * scale;
      }
      if (weight != 1.0f)
        for (int64_t j = 0; j < v; ++j) o[j] *= weight;
    }
  });
  return {lse, counts};
}

// Backward of pooled_forward: for the gradient g (n, v) of its output, writes the gradient of the piece logits
// (P, v) into out: (g[r] - softmax_i * sum_j g[r, j]) * w_r * inv_t for a piece i of row r (w_r = 1 / count for
// mean, else 1), 0 for pieces of no row (r = n).
void pooled_backward(torch::Tensor x, torch::Tensor lse, torch::Tensor rows, torch::Tensor counts, torch::Tensor g,
                     double inv_t, bool mean, torch::Tensor out) {
  check_rows(x, "pooled_backward: logits");
  check_rows(g, "pooled_backward: grad");
  check_rows(out, "pooled_backward: out");
  TORCH_CHECK(out.sizes() == x.sizes(), "pooled_backward: out must be shaped like the logits");
  TORCH_CHECK(g.size(1) == x.size(1) && lse.size(0) == x.size(0) && rows.size(0) == x.size(0) &&
                  counts.size(0) == g.size(0) && lse.is_contiguous() && counts.is_contiguous() && rows.is_contiguous() &&
                  lse.scalar_type() == torch::kFloat && counts.scalar_type() == torch::kFloat &&
                  rows.scalar_type() == torch::kLong,
              "pooled_backward: shapes or dtypes do not match");
  const int64_t pieces = x.size(0), v = x.size(1), n = g.size(0), full = v / kLanes * kLanes;
  std::vector<float> g_sum(n);
  const float *xp = x.data_ptr<float>(), *lp = lse.data_ptr<float>(), *gp = g.data_ptr<float>(),
              *cp = counts.data_ptr<float>();
  const int64_t* rp = rows.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const float scale = static_cast<float>(inv_t);
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      vfloat acc = splat(0.0f);
      const float* gr = gp + r * v;
      for (int64_t j = 0; j < full; j += kLanes) {
        vfloat gv;
        std::memcpy(&gv, gr + j, sizeof(gv));
        acc += gv;
      }
      float total = hsum(acc);
      for (int64_t j = full; j < v; ++j) total += gr[j];
      g_sum[r] = total;
    }
  });
  at::parallel_for(0, pieces, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = rp[i];
      TORCH_CHECK(r >= 0 && r <= n, "pooled_backward: row index out of range");
      float* oi = op + i * v;
      if (r == n) {
        std::memset(oi, 0, sizeof(float) * v);
        continue;
      }
      const float* xi = xp + i * v;
      const float* gi = gp + r * v;
      const float w = (mean && cp[r] > 0 ? 1.0f / cp[r] : 1.0f) * scale;
      const float shift = lp[i], mass = g_sum[r];
      for (int64_t j = 0; j < full; j += kLanes) {
        vfloat xv, gv;
        std::memcpy(&xv, xi + j, sizeof(xv));
        std::memcpy(&gv, gi + j, sizeof(gv));
        const vfloat o = (gv - vexp(xv * splat(scale) - splat(shift)) * splat(mass)) * splat(w);
        std::memcpy(oi + j, &o, sizeof(o));
      }
      for (int64_t j = full; j < v; ++j) oi[j] = (gi[j] - std::exp(xi[j] * scale - shift) * mass) * w;
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pooled_forward", &pooled_forward, "the pooled log-softmax of the piece logits per aligned position");
  m.def("pooled_backward", &pooled_backward, "its gradient with respect to the piece logits");
  m.def("reduce_kl", &reduce_kl, "the reduce alignment's KL over a block of positions, with its gradient");
  m.def("row_logsumexp", &row_logsumexp, "logsumexp of each row of x * inv_t");
}
