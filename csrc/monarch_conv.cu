// Monarch FFT causal convolution on tensor cores (mma.sync m16n8k16, float32 accumulation).
//
// Algorithm (emulated exactly, tile by tile, by genomeconv/kernels/tiles.py):
// * Real-to-half-complex trick: the N = 2M point real input x (zero padded past L) is packed as
//   z[n] = x[2n] + i x[2n+1] and transformed with an M-point complex FFT.
// * The M-point FFT is a decimation-in-frequency Monarch product of p stages with factors r_t in
//   {16, 32, 64} (plan_for): stage t views each block of S_t = M / (r_0 ... r_{t-1}) points as an
//   (r_t x s_t) matrix, multiplies it by the DFT matrix F_{r_t} / r_t on the tensor cores and then
//   by the twiddles W_{S_t}^{k1 n2}. Outputs stay in place, in digit-reversed order: frequency
//   k = d_0 + r_0 (d_1 + r_1 (...)) sits at position sum_t d_t M / (r_0 ... r_t) (plan_pos).
// * Pointwise step: for each pair (k, M-k) the half-complex spectrum X[k] is recovered, multiplied
//   by the cached filter spectrum kf = rfft(k, N) + D, and packed back for the inverse.
// * Inverse: the exact inverse of each stage in reverse order (conjugate twiddles, then conj(F)),
//   which also undoes the digit reversal. Forward stages carry 1/r so intermediates stay bounded.
// * mma operands: by default every dtype uses the bf16x3 split (hi*hi + hi*lo + lo*hi, float32
//   range, 16-bit operand mantissas: about 1e-5 relative error in float32, the output rounding
//   in fp16/bf16). `fast` uses one operand per product (fp16 for fp16 inputs, else bf16): 3x
//   fewer mma's, about 2x the output rounding error. Intermediates between stages are float32
//   in shared memory; accumulation is float32 everywhere.
// * Sizes: M up to fused_max_points() (16K on H100/A100) run in one fused kernel (load, gate,
//   FFT, multiply, inverse FFT, gate, store). Larger M use three kernels: an outer r0-point stage
//   (four-step: column FFTs in shared memory, twiddle W_M^{k1 n2}, complex intermediates to
//   global), the fused inner conv over pairs of sub-blocks (k1, r0-k1) that the real trick
//   couples, and the inverse outer stage.
// * Partial convolutions: overlap-save segments of seg_out outputs with a halo of Lk-1 inputs,
//   each a small fused FFT, so work grows as L log Lk. Frequency-sparse masks over the first
//   factor's blocks skip all later stages (and, past the fused size, whole inner CTAs).
// * Any L (guarded loads, implicit zero padding), any rows, 64-bit offsets.
#include "monarch_conv.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace genomeconv {
namespace {

constexpr int kMaxStages = 4;
constexpr int kThreads = 256;
constexpr int kMinPointsPerCta = 2048;   // small transforms: several rows per CTA
constexpr int kOuterPoints = 8192;       // complex points per outer-stage CTA

// Stage factors packed 4 bits per stage (log2 r_t), so that no register array is ever indexed at
// run time (which would move it to local memory).
struct Plan {
  int p;
  int logs;
  __host__ __device__ __forceinline__ int radix(int t) const { return 1 << ((logs >> (4 * t)) & 15); }
};

// Factors of a 2^m point FFT: ceil(m/6) stages of 4..6 bits, larger factors first. m = 7 has no
// such split; callers round those sizes up (see genomeconv/kernels/tiles.py: transform_points).
__host__ __device__ inline Plan plan_for(int m) {
  Plan pl{};
  pl.p = (m + 5) / 6;
  const int base = m / pl.p, rem = m % pl.p;
  for (int t = 0; t < pl.p; ++t) pl.logs |= (base + (t < rem ? 1 : 0)) << (4 * t);
  return pl;
}

__host__ __device__ inline bool plan_ok(int m) {
  if (m < 4) return false;
  Plan pl = plan_for(m);
  if (pl.p > kMaxStages) return false;
  for (int t = 0; t < pl.p; ++t)
    if (pl.radix(t) < 16 || pl.radix(t) > 64) return false;
  return true;
}

inline int log2i(int64_t v) {
  int m = 0;
  while ((int64_t{1} << m) < v) ++m;
  return m;
}

// Position of frequency k in the digit-reversed output of a P-point plan.
__device__ __forceinline__ int plan_pos(const Plan& pl, int P, int k) {
  int pos = 0, S = P;
#pragma unroll
  for (int t = 0; t < kMaxStages; ++t) {
    if (t < pl.p) {
      const int r = pl.radix(t);
      S /= r;
      pos += (k % r) * S;
      k /= r;
    }
  }
  return pos;
}

// Frequency held at position pos (inverse of plan_pos).
__device__ __forceinline__ int plan_freq(const Plan& pl, int P, int pos) {
  int k = 0, mul = 1, S = P;
#pragma unroll
  for (int t = 0; t < kMaxStages; ++t) {
    if (t < pl.p) {
      const int r = pl.radix(t);
      S /= r;
      k += (pos / S) * mul;
      pos %= S;
      mul *= r;
    }
  }
  return k;
}

// exp(-2 pi i j / twN) from the half table tw[j] = exp(-2 pi i j / twN), j < twN / 2.
__device__ __forceinline__ float2 twid(const float2* __restrict__ tw, int64_t twN, int64_t j) {
  j &= (twN - 1);
  const int64_t half = twN >> 1;
  if (j < half) return __ldg(tw + j);
  const float2 w = __ldg(tw + (j - half));
  return make_float2(-w.x, -w.y);
}

__device__ __forceinline__ float2 cmul(float2 a, float2 b) {
  return make_float2(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}
__device__ __forceinline__ float2 cmulc(float2 a, float2 b) {  // a * conj(b)
  return make_float2(a.x * b.x + a.y * b.y, a.y * b.x - a.x * b.y);
}

// ---------------------------------------------------------------------------------------------
// mma operands: pack two floats into one 32-bit register of fp16 or bf16 (low half = first).

template <bool HALF>
__device__ __forceinline__ uint32_t pack2(float a, float b) {
  uint32_t r;
  if constexpr (HALF) {
    const __half2 v = __floats2half2_rn(a, b);
    memcpy(&r, &v, 4);
  } else {
    const __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    memcpy(&r, &v, 4);
  }
  return r;
}

template <bool HALF>
__device__ __forceinline__ float round_lo(float a) {
  if constexpr (HALF) return __half2float(__float2half_rn(a));
  else return __bfloat162float(__float2bfloat16_rn(a));
}

template <bool HALF>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (HALF) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

// Operand precision: HALF selects fp16 (else bf16); SPLIT adds the lo parts (bf16x3 for float32).
template <bool HALF_, bool SPLIT_>
struct Prec {
  static constexpr bool HALF = HALF_;
  static constexpr bool SPLIT = SPLIT_;
};

// One complex 16x16x8 product: acc += A * B with A, B split into real and imaginary fragments.
template <class P>
struct CFragB {
  uint32_t re[2], im[2], rel[2], iml[2];
};

template <class P>
struct CFragA {
  uint32_t re[4], im[4], nim[4], rel[4], iml[4], niml[4];
};

template <class P>
__device__ __forceinline__ void cmma(float (&dr)[4], float (&di)[4], const CFragA<P>& a,
                                     const CFragB<P>& b) {
  mma16816<P::HALF>(dr, a.re, b.re);
  mma16816<P::HALF>(dr, a.nim, b.im);
  mma16816<P::HALF>(di, a.re, b.im);
  mma16816<P::HALF>(di, a.im, b.re);
  if constexpr (P::SPLIT) {
    mma16816<P::HALF>(dr, a.re, b.rel);
    mma16816<P::HALF>(dr, a.rel, b.re);
    mma16816<P::HALF>(dr, a.nim, b.iml);
    mma16816<P::HALF>(dr, a.niml, b.im);
    mma16816<P::HALF>(di, a.re, b.iml);
    mma16816<P::HALF>(di, a.rel, b.im);
    mma16816<P::HALF>(di, a.im, b.rel);
    mma16816<P::HALF>(di, a.iml, b.re);
  }
}

// ---------------------------------------------------------------------------------------------
// One Monarch stage of radix R over `total` points in shared memory (rows of P points each).
// Column c of the stage matrix is (block c / s, offset c % s) with s = S / R; element (j, c) sits
// at (c / s) * S + j * s + c % s. A warp takes 8 columns at a time: it loads all R rows of them
// into B fragments (inverse: after the conjugate twiddle), then for each 16-row tile of the
// output accumulates R/16 complex mma's and writes back in place (forward: after the twiddle).
// keep (nullable): mask over the first stage's P / S_1 blocks; stages t > 0 skip masked blocks.
template <int R, bool INV, class P>
__device__ void monarch_stage(float* __restrict__ re, float* __restrict__ im, int total, int S,
                              int P_, int S1, const uint8_t* __restrict__ keep, bool skip,
                              const float2* __restrict__ tw, int64_t twN) {
  constexpr int KT = R / 16;
  const int s = S / R;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int g = lane >> 2, t4 = lane & 3;
  const int ncols = total / R;
  const int ntasks = (ncols + 7) >> 3;
  const int64_t tstep = twN / S;
  const int64_t fstep = twN / R;
  const float scale = INV ? 1.f : 1.f / R;

  for (int task = warp; task < ntasks; task += nwarps) {
    const int colB = task * 8 + g;
    const bool okB = colB < ncols;
    const int n2B = okB ? colB % s : 0;
    const int baseB = okB ? (colB / s) * S + n2B : 0;
    if (skip) {  // frequency-sparse: whole task in masked first-stage blocks -> no work
      const bool live = okB && keep[(baseB % P_) / S1] != 0;
      if (!__any_sync(0xffffffffu, live)) continue;
    }
    CFragB<P> b[KT];
#pragma unroll
    for (int ki = 0; ki < KT; ++ki) {
      float vr[4], vi[4];
#pragma unroll
      for (int h = 0; h < 4; ++h) {
        const int row = ki * 16 + 2 * t4 + (h & 1) + 8 * (h >> 1);
        float2 v = make_float2(0.f, 0.f);
        if (okB) {
          v = make_float2(re[baseB + row * s], im[baseB + row * s]);
          if (INV && s > 1) v = cmulc(v, twid(tw, twN, int64_t((row * n2B) & (S - 1)) * tstep));
        }
        vr[h] = v.x;
        vi[h] = v.y;
      }
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        b[ki].re[q] = pack2<P::HALF>(vr[2 * q], vr[2 * q + 1]);
        b[ki].im[q] = pack2<P::HALF>(vi[2 * q], vi[2 * q + 1]);
        if constexpr (P::SPLIT) {
          b[ki].rel[q] = pack2<P::HALF>(vr[2 * q] - round_lo<P::HALF>(vr[2 * q]),
                                        vr[2 * q + 1] - round_lo<P::HALF>(vr[2 * q + 1]));
          b[ki].iml[q] = pack2<P::HALF>(vi[2 * q] - round_lo<P::HALF>(vi[2 * q]),
                                        vi[2 * q + 1] - round_lo<P::HALF>(vi[2 * q + 1]));
        }
      }
    }
    __syncwarp();
#pragma unroll 1
    for (int mi = 0; mi < KT; ++mi) {
      float accr[4] = {0.f, 0.f, 0.f, 0.f}, acci[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
      for (int ki = 0; ki < KT; ++ki) {
        // A tile (mi, ki) of F_R / R (forward) or conj(F_R) (inverse), built from the table.
        float ar[8], ai[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const int row = mi * 16 + g + 8 * ((e >> 1) & 1);
          const int col = ki * 16 + 2 * t4 + (e & 1) + 8 * (e >> 2);
          const float2 w = twid(tw, twN, int64_t((row * col) & (R - 1)) * fstep);
          ar[e] = w.x * scale;
          ai[e] = (INV ? -w.y : w.y) * scale;
        }
        CFragA<P> a;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          a.re[q] = pack2<P::HALF>(ar[2 * q], ar[2 * q + 1]);
          a.im[q] = pack2<P::HALF>(ai[2 * q], ai[2 * q + 1]);
          a.nim[q] = pack2<P::HALF>(-ai[2 * q], -ai[2 * q + 1]);
          if constexpr (P::SPLIT) {
            const float l0 = ar[2 * q] - round_lo<P::HALF>(ar[2 * q]);
            const float l1 = ar[2 * q + 1] - round_lo<P::HALF>(ar[2 * q + 1]);
            const float m0 = ai[2 * q] - round_lo<P::HALF>(ai[2 * q]);
            const float m1 = ai[2 * q + 1] - round_lo<P::HALF>(ai[2 * q + 1]);
            a.rel[q] = pack2<P::HALF>(l0, l1);
            a.iml[q] = pack2<P::HALF>(m0, m1);
            a.niml[q] = pack2<P::HALF>(-m0, -m1);
          }
        }
        cmma<P>(accr, acci, a, b[ki]);
      }
#pragma unroll
      for (int h = 0; h < 4; ++h) {
        const int row = mi * 16 + g + 8 * (h >> 1);
        const int col = task * 8 + 2 * t4 + (h & 1);
        if (col < ncols) {
          const int n2 = col % s;
          const int addr = (col / s) * S + n2 + row * s;
          float2 v = make_float2(accr[h], acci[h]);
          if (!INV && s > 1) v = cmul(v, twid(tw, twN, int64_t((row * n2) & (S - 1)) * tstep));
          re[addr] = v.x;
          im[addr] = v.y;
        }
      }
    }
  }
}

// Full P-point FFT (forward) or its exact inverse on total / P rows held in shared memory.
template <bool INV, class P>
__device__ void cta_fft(float* re, float* im, int total, const Plan& pl, int P_,
                        const uint8_t* keep, const float2* tw, int64_t twN) {
  const int S1 = P_ / pl.radix(0);
#pragma unroll 1
  for (int i = 0; i < pl.p; ++i) {
    const int t = INV ? pl.p - 1 - i : i;
    int S = P_;
    for (int u = 0; u < t; ++u) S /= pl.radix(u);
    const bool skip = keep != nullptr && t > 0;
    switch (pl.radix(t)) {
      case 16: monarch_stage<16, INV, P>(re, im, total, S, P_, S1, keep, skip, tw, twN); break;
      case 32: monarch_stage<32, INV, P>(re, im, total, S, P_, S1, keep, skip, tw, twN); break;
      default: monarch_stage<64, INV, P>(re, im, total, S, P_, S1, keep, skip, tw, twN); break;
    }
    __syncthreads();
  }
}

// Real-trick pointwise step on one pair of inner sub-blocks. The M-point spectrum is split as
// k = k1 + r0 * k2 (k1 < r0 the outer digit, k2 < S1 inside the sub-block, digit-reversed by
// `inner`); block A holds k1 = k1a, block B its partner (r0 - k1a) % r0 (the same block when
// k1a is 0 or r0 / 2). The fused kernel is r0 = 1. kf: this channel's (M+1) spectrum.
__device__ void pointwise_pair(float* reA, float* imA, float* reB, float* imB, int S1, int r0,
                               int k1a, int64_t M, const Plan& inner,
                               const float2* __restrict__ kf, const float2* __restrict__ tw,
                               bool masked) {
  const bool self = (k1a == 0) || (2 * k1a == r0);
  if (self) {
    reB = reA;
    imB = imA;
  }
  for (int k2 = threadIdx.x; k2 < S1; k2 += blockDim.x) {
    const int k2p = (k1a == 0) ? ((S1 - k2) & (S1 - 1)) : (S1 - 1 - k2);
    if (self && k2 > k2p) continue;
    const int pa = plan_pos(inner, S1, k2), pb = plan_pos(inner, S1, k2p);
    if (masked) {
      reA[pa] = imA[pa] = 0.f;
      reB[pb] = imB[pb] = 0.f;
      continue;
    }
    const int64_t k = k1a + int64_t(r0) * k2;
    const float2 A = make_float2(reA[pa], imA[pa]);
    const float2 Bz = make_float2(reB[pb], imB[pb]);
    if (k == 0) {
      const float x0 = A.x + A.y, xm = A.x - A.y;  // X[0], X[M] (real)
      const float2 y0 = make_float2(x0 * __ldg(kf).x, x0 * __ldg(kf).y);
      const float2 ym = make_float2(xm * __ldg(kf + M).x, xm * __ldg(kf + M).y);
      // Z'[0] = (Y[0] + Y[M]) / 2 + i (Y[0] - Y[M]) / 2
      const float2 e = make_float2(0.5f * (y0.x + ym.x), 0.5f * (y0.y + ym.y));
      const float2 o = make_float2(0.5f * (y0.x - ym.x), 0.5f * (y0.y - ym.y));
      reA[pa] = e.x - o.y;
      imA[pa] = e.y + o.x;
      continue;
    }
    const int64_t j = M - k;
    const float2 wk = __ldg(tw + k), wj = __ldg(tw + j);
    // X[k] = Xe + W_N^k Xo with Xe = (Z[k] + conj Z[j]) / 2, Xo = -i (Z[k] - conj Z[j]) / 2.
    const float2 xek = make_float2(0.5f * (A.x + Bz.x), 0.5f * (A.y - Bz.y));
    const float2 xok = make_float2(0.5f * (A.y + Bz.y), -0.5f * (A.x - Bz.x));
    const float2 xej = make_float2(0.5f * (Bz.x + A.x), 0.5f * (Bz.y - A.y));
    const float2 xoj = make_float2(0.5f * (Bz.y + A.y), -0.5f * (Bz.x - A.x));
    const float2 tk = cmul(wk, xok), tj = cmul(wj, xoj);
    const float2 Xk = make_float2(xek.x + tk.x, xek.y + tk.y);
    const float2 Xj = make_float2(xej.x + tj.x, xej.y + tj.y);
    const float2 Yk = cmul(Xk, __ldg(kf + k)), Yj = cmul(Xj, __ldg(kf + j));
    // Z'[k] = (Y[k] + conj Y[j]) / 2 + i W_N^-k (Y[k] - conj Y[j]) / 2, and the same for j.
    const float2 ek = make_float2(0.5f * (Yk.x + Yj.x), 0.5f * (Yk.y - Yj.y));
    const float2 ok = cmulc(make_float2(0.5f * (Yk.x - Yj.x), 0.5f * (Yk.y + Yj.y)), wk);
    const float2 ej = make_float2(0.5f * (Yj.x + Yk.x), 0.5f * (Yj.y - Yk.y));
    const float2 oj = cmulc(make_float2(0.5f * (Yj.x - Yk.x), 0.5f * (Yj.y + Yk.y)), wj);
    reA[pa] = ek.x - ok.y;
    imA[pa] = ek.y + ok.x;
    reB[pb] = ej.x - oj.y;
    imB[pb] = ej.y + oj.x;
  }
}

template <typename T>
__device__ __forceinline__ float to_f(T v) {
  if constexpr (sizeof(T) == 4) return v;
  else if constexpr (std::is_same<T, __half>::value) return __half2float(v);
  else return __bfloat162float(v);
}
template <typename T>
__device__ __forceinline__ T from_f(float v) {
  if constexpr (sizeof(T) == 4) return v;
  else if constexpr (std::is_same<T, __half>::value) return __float2half_rn(v);
  else return __float2bfloat16_rn(v);
}

// Gated input sample t of a row (0 outside [0, L)); reverse reads the row backwards.
template <typename T>
__device__ __forceinline__ float load_x(const T* __restrict__ u, const T* __restrict__ gate,
                                        int64_t rowoff, int64_t L, int64_t t, int reverse) {
  if (t < 0 || t >= L) return 0.f;
  const int64_t i = rowoff + (reverse ? L - 1 - t : t);
  float v = to_f(u[i]);
  if (gate) v *= to_f(gate[i]);
  return v;
}

template <typename T>
__device__ __forceinline__ void store_y(T* __restrict__ y, const T* __restrict__ gate,
                                        int64_t rowoff, int64_t L, int64_t t, int reverse,
                                        float v) {
  const int64_t i = rowoff + (reverse ? L - 1 - t : t);
  if (gate) v *= to_f(gate[i]);
  y[i] = from_f<T>(v);
}

// ---------------------------------------------------------------------------------------------
// Fused conv: each CTA holds R virtual rows (row, overlap-save segment) of M complex points.
template <typename T, class P>
__global__ void __launch_bounds__(kThreads, 1)
fused_conv_kernel(const T* __restrict__ u, const T* __restrict__ pregate,
                  const T* __restrict__ postgate, T* __restrict__ y,
                  const float2* __restrict__ kf, const float2* __restrict__ tw,
                  const uint8_t* __restrict__ keep, int64_t vrows, int64_t nseg, int64_t H,
                  int64_t L, int M, int64_t seg_out, int64_t halo, int R, Plan pl, int reverse) {
  extern __shared__ float smem[];
  const int total = R * M;
  float* re = smem;
  float* im = smem + total;
  const int64_t v0 = int64_t(blockIdx.x) * R;
  const int64_t twN = 2 * int64_t(M);

  for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int rl = idx / M, n = idx % M;
    const int64_t v = v0 + rl;
    float a = 0.f, b = 0.f;
    if (v < vrows) {
      const int64_t row = v / nseg, t0 = (v % nseg) * seg_out - halo;
      a = load_x(u, pregate, row * L, L, t0 + 2 * n, reverse);
      b = load_x(u, pregate, row * L, L, t0 + 2 * n + 1, reverse);
    }
    re[idx] = a;
    im[idx] = b;
  }
  __syncthreads();
  cta_fft<false, P>(re, im, total, pl, M, keep, tw, twN);
  for (int rl = 0; rl < R; ++rl) {
    const int64_t v = v0 + rl;
    if (v >= vrows) break;
    const int64_t h = (v / nseg) % H;
    // Sparse: the fused kernel's blocks are the first factor's residues k % radix[0]; masking is
    // applied per pair below (the mask is symmetric, so k and M - k agree).
    if (keep == nullptr) {
      pointwise_pair(re + rl * M, im + rl * M, re + rl * M, im + rl * M, M, 1, 0, M, pl,
                     kf + h * (int64_t(M) + 1), tw, false);
    } else {
      // Split the M-point plan as r0 = radix[0] outer blocks of S1 points to reuse the pair
      // logic with a per-block mask: block k1 sits at offset k1 * S1 after stage 0.
      const int r0 = pl.radix(0), S1 = M / r0;
      Plan inner{};
      inner.p = pl.p - 1;
      inner.logs = pl.logs >> 4;
      for (int k1 = 0; 2 * k1 <= r0; ++k1) {
        const int k1b = (r0 - k1) % r0;
        float* ra = re + rl * M + k1 * S1;
        float* ia = im + rl * M + k1 * S1;
        pointwise_pair(ra, ia, re + rl * M + k1b * S1, im + rl * M + k1b * S1, S1, r0, k1, M,
                       inner, kf + h * (int64_t(M) + 1), tw, keep[k1] == 0);
      }
    }
  }
  __syncthreads();
  cta_fft<true, P>(re, im, total, pl, M, keep, tw, twN);
  for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int rl = idx / M, n = idx % M;
    const int64_t v = v0 + rl;
    if (v >= vrows) continue;
    const int64_t row = v / nseg, t0 = (v % nseg) * seg_out - halo;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t p = 2 * int64_t(n) + e;
      const int64_t t = t0 + p;
      if (p >= halo && p < halo + seg_out && t < L)
        store_y(y, postgate, row * L, L, t, reverse, e ? im[idx] : re[idx]);
    }
  }
}

// Outer stage, forward: CTA = (row, C consecutive columns n2 of the r0 x S1 view of z).
template <typename T, class P>
__global__ void __launch_bounds__(kThreads, 1)
outer_fwd_kernel(const T* __restrict__ u, const T* __restrict__ pregate,
                 float2* __restrict__ work, const float2* __restrict__ tw, int64_t H, int64_t L,
                 int64_t M, int r0, int C, Plan pl0, int reverse) {
  extern __shared__ float smem[];
  const int total = C * r0;
  float* re = smem;
  float* im = smem + total;
  const int64_t S1 = M / r0;
  const int64_t tiles = S1 / C;
  const int64_t row = int64_t(blockIdx.x) / tiles;
  const int64_t n2b = (int64_t(blockIdx.x) % tiles) * C;
  const int64_t twN = 2 * M;
  const int64_t half_len = (L + 1) / 2;  // packed points holding data; the rest is padding
  for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int c = idx % C, n1 = idx / C;
    const int64_t n = n1 * S1 + n2b + c;
    float a = 0.f, b = 0.f;
    if (n < half_len) {
      a = load_x(u, pregate, row * L, L, 2 * n, reverse);
      b = load_x(u, pregate, row * L, L, 2 * n + 1, reverse);
    }
    re[c * r0 + n1] = a;
    im[c * r0 + n1] = b;
  }
  __syncthreads();
  // r0-point column FFTs; their twiddles W_{r0} are W_{2M} at stride 2M / r0 (same table).
  cta_fft<false, P>(re, im, total, pl0, r0, nullptr, tw, twN);
  float2* out = work + row * M;
  for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int c = idx % C, q = idx / C;
    const int64_t n2 = n2b + c;
    const int64_t k1 = plan_freq(pl0, r0, q);
    const float2 v = make_float2(re[c * r0 + q], im[c * r0 + q]);
    out[q * S1 + n2] = cmul(v, twid(tw, twN, 2 * ((k1 * n2) & (M - 1))));
  }
}

// Inner conv over one pair of sub-blocks (k1a, r0 - k1a) of the outer stage's output.
template <class P>
__global__ void __launch_bounds__(kThreads, 1)
inner_conv_kernel(float2* __restrict__ work, const float2* __restrict__ kf,
                  const float2* __restrict__ tw, const uint8_t* __restrict__ keep, int64_t H,
                  int64_t M, int r0, Plan pl0, Plan pl1) {
  extern __shared__ float smem[];
  const int S1 = int(M / r0);
  const int npairs = r0 / 2 + 1;
  const int64_t row = int64_t(blockIdx.x) / npairs;
  const int k1a = int(int64_t(blockIdx.x) % npairs);
  const int k1b = (r0 - k1a) % r0;
  const bool self = k1b == k1a;
  const int nb = self ? 1 : 2;
  const int total = nb * S1;
  float* re = smem;
  float* im = smem + total;
  const int64_t twN = 2 * M;
  float2* base = work + row * M;
  const int qa = plan_pos(pl0, r0, k1a), qb = plan_pos(pl0, r0, k1b);
  const bool masked = keep != nullptr && keep[k1a] == 0;
  if (masked) {  // frequency-sparse: this pair's spectrum is zero, no transform work at all
    for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
      const int blk = idx / S1, i = idx % S1;
      base[int64_t(blk ? qb : qa) * S1 + i] = make_float2(0.f, 0.f);
    }
    return;
  }
  for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int blk = idx / S1, i = idx % S1;
    const float2 v = base[int64_t(blk ? qb : qa) * S1 + i];
    re[idx] = v.x;
    im[idx] = v.y;
  }
  __syncthreads();
  cta_fft<false, P>(re, im, total, pl1, S1, nullptr, tw, twN);
  const int64_t h = row % H;
  pointwise_pair(re, im, re + (self ? 0 : S1), im + (self ? 0 : S1), S1, r0, k1a, M, pl1,
                 kf + h * (M + 1), tw, false);
  __syncthreads();
  cta_fft<true, P>(re, im, total, pl1, S1, nullptr, tw, twN);
  for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int blk = idx / S1, i = idx % S1;
    base[int64_t(blk ? qb : qa) * S1 + i] = make_float2(re[idx], im[idx]);
  }
}

// Outer stage, inverse: conjugate twiddles, inverse r0-point column FFTs, unpack, gate, store.
template <typename T, class P>
__global__ void __launch_bounds__(kThreads, 1)
outer_inv_kernel(const float2* __restrict__ work, const T* __restrict__ postgate,
                 T* __restrict__ y, const float2* __restrict__ tw, int64_t H, int64_t L,
                 int64_t M, int r0, int C, Plan pl0, int reverse) {
  extern __shared__ float smem[];
  const int total = C * r0;
  float* re = smem;
  float* im = smem + total;
  const int64_t S1 = M / r0;
  const int64_t tiles = S1 / C;
  const int64_t row = int64_t(blockIdx.x) / tiles;
  const int64_t n2b = (int64_t(blockIdx.x) % tiles) * C;
  const int64_t twN = 2 * M;
  const float2* in = work + row * M;
  for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int c = idx % C, q = idx / C;
    const int64_t n2 = n2b + c;
    const int64_t k1 = plan_freq(pl0, r0, q);
    const float2 v = cmulc(in[q * S1 + n2], twid(tw, twN, 2 * ((k1 * n2) & (M - 1))));
    re[c * r0 + q] = v.x;
    im[c * r0 + q] = v.y;
  }
  __syncthreads();
  cta_fft<true, P>(re, im, total, pl0, r0, nullptr, tw, twN);
  for (int idx = threadIdx.x; idx < total; idx += blockDim.x) {
    const int c = idx % C, n1 = idx / C;
    const int64_t n = n1 * S1 + n2b + c;
    if (2 * n < L) store_y(y, postgate, row * L, L, 2 * n, reverse, re[c * r0 + n1]);
    if (2 * n + 1 < L) store_y(y, postgate, row * L, L, 2 * n + 1, reverse, im[c * r0 + n1]);
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

int device_smem_optin() {
  int dev = 0, v = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 48 * 1024;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
    return 48 * 1024;
  return v;
}

// Outer/inner split for M > fused_max_points(): r0 outer points (a valid plan of 16..4096),
// S1 = M / r0 inner points, with a pair of inner sub-blocks fitting one CTA.
bool split_outer(int64_t M, int64_t maxp, int* r0_out, int64_t* S1_out) {
  int m = log2i(M);
  for (int a = 4; a <= 12; ++a) {
    const int b = m - a;
    if (!plan_ok(a) || !plan_ok(b)) continue;
    if ((int64_t{2} << b) > maxp) continue;           // two inner sub-blocks per CTA
    if ((int64_t{8} << a) > kOuterPoints * 2) continue;  // at least 8 columns per outer CTA
    *r0_out = 1 << a;
    *S1_out = int64_t{1} << b;
    return true;
  }
  return false;
}

template <typename T, class P>
cudaError_t launch_typed(const ConvArgs& a, cudaStream_t stream) {
  const T* u = static_cast<const T*>(a.u);
  const T* pre = static_cast<const T*>(a.pregate);
  const T* post = static_cast<const T*>(a.postgate);
  T* y = static_cast<T*>(a.y);
  const int m = log2i(a.M);
  const int64_t maxp = fused_max_points();
  if (a.M <= maxp) {
    const Plan pl = plan_for(m);
    const int Mi = int(a.M);
    const int R = Mi >= kMinPointsPerCta ? 1 : int(kMinPointsPerCta / Mi);
    const int64_t nseg = (a.L + a.seg_out - 1) / a.seg_out;
    const int64_t vrows = a.rows * nseg;
    const int64_t blocks = (vrows + R - 1) / R;
    if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
    const size_t smem = size_t(2) * R * Mi * sizeof(float);
    cudaError_t err = cudaFuncSetAttribute(fused_conv_kernel<T, P>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
    if (err != cudaSuccess) return err;
    fused_conv_kernel<T, P><<<unsigned(blocks), kThreads, smem, stream>>>(
        u, pre, post, y, a.kf, a.tw, a.keep, vrows, nseg, a.H, a.L, Mi, a.seg_out, a.halo, R,
        pl, a.reverse);
    return cudaGetLastError();
  }
  int r0 = 0;
  int64_t S1 = 0;
  if (!split_outer(a.M, maxp, &r0, &S1)) return cudaErrorInvalidValue;
  if (a.work == nullptr || a.seg_out < a.L || a.halo != 0) return cudaErrorInvalidValue;
  const Plan pl0 = plan_for(log2i(r0)), pl1 = plan_for(log2i(S1));
  const int C = int(S1 < kOuterPoints / r0 ? S1 : (kOuterPoints / r0 < 8 ? 8 : kOuterPoints / r0));
  const int64_t outer_blocks = a.rows * (S1 / C);
  const int64_t inner_blocks = a.rows * (r0 / 2 + 1);
  if (outer_blocks > 0x7fffffffLL || inner_blocks > 0x7fffffffLL)
    return cudaErrorInvalidConfiguration;
  const size_t smem_o = size_t(2) * C * r0 * sizeof(float);
  const size_t smem_i = size_t(2) * 2 * S1 * sizeof(float);
  cudaError_t err;
  if ((err = cudaFuncSetAttribute(outer_fwd_kernel<T, P>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_o))))
    return err;
  if ((err = cudaFuncSetAttribute(inner_conv_kernel<P>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_i))))
    return err;
  if ((err = cudaFuncSetAttribute(outer_inv_kernel<T, P>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_o))))
    return err;
  outer_fwd_kernel<T, P><<<unsigned(outer_blocks), kThreads, smem_o, stream>>>(
      u, pre, a.work, a.tw, a.H, a.L, a.M, r0, C, pl0, a.reverse);
  if ((err = cudaGetLastError())) return err;
  inner_conv_kernel<P><<<unsigned(inner_blocks), kThreads, smem_i, stream>>>(
      a.work, a.kf, a.tw, a.keep, a.H, a.M, r0, pl0, pl1);
  if ((err = cudaGetLastError())) return err;
  outer_inv_kernel<T, P><<<unsigned(outer_blocks), kThreads, smem_o, stream>>>(
      a.work, post, y, a.tw, a.H, a.L, a.M, r0, C, pl0, a.reverse);
  return cudaGetLastError();
}

}  // namespace

int64_t fused_max_points() {
  const int64_t pts = device_smem_optin() / int64_t(2 * sizeof(float));
  for (int m = 18; m > 4; --m)
    if ((int64_t{1} << m) <= pts && plan_ok(m)) return int64_t{1} << m;
  return 16;
}

int first_block_count(int64_t M) {
  if (M <= fused_max_points()) return plan_for(log2i(M)).radix(0);
  int r0 = 0;
  int64_t S1 = 0;
  return split_outer(M, fused_max_points(), &r0, &S1) ? r0 : 0;
}

int64_t work_bytes(int64_t rows, int64_t M) {
  return M <= fused_max_points() ? 0 : rows * M * int64_t(sizeof(float2));
}

cudaError_t launch_conv(const ConvArgs& a, cudaStream_t stream) {
  if (a.M < 16 || (a.M & (a.M - 1)) != 0 || (a.M <= fused_max_points() && !plan_ok(log2i(a.M))))
    return cudaErrorInvalidValue;
  if (a.rows == 0 || a.L == 0) return cudaSuccess;
  if (a.seg_out <= 0 || a.halo < 0 || a.seg_out + a.halo > 2 * a.M) return cudaErrorInvalidValue;
  using Split = Prec<false, true>;
  switch (a.dtype) {
    case DType::kFloat16:
      return a.fast ? launch_typed<__half, Prec<true, false>>(a, stream)
                    : launch_typed<__half, Split>(a, stream);
    case DType::kBFloat16:
      return a.fast ? launch_typed<__nv_bfloat16, Prec<false, false>>(a, stream)
                    : launch_typed<__nv_bfloat16, Split>(a, stream);
    default:
      return a.fast ? launch_typed<float, Prec<false, false>>(a, stream)
                    : launch_typed<float, Split>(a, stream);
  }
}

}  // namespace genomeconv
