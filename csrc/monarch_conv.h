// Host interface of the Monarch FFT convolution kernels (monarch_conv.cu).
//
// Plain C++ over CUDA runtime types only, so that the kernels compile without torch and the torch
// binding (binding.cpp) stays a thin layer. The algorithm and the exact tile schedule are
// documented in monarch_conv.cu and emulated step by step on the CPU by genomeconv/kernels/tiles.py.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>

namespace genomeconv {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// One causal convolution launch: y = postgate * conv(pregate * u, k) (+ D folded into kf).
// All tensors are contiguous; u, pregate, postgate and y are (rows, L) with rows = B*H, row r uses
// channel r % H. The rfft size is N = 2*M (real-to-half-complex trick: an N-point real FFT is an
// M-point complex one).
struct ConvArgs {
  const void* u = nullptr;
  const void* pregate = nullptr;   // nullable
  const void* postgate = nullptr;  // nullable
  void* y = nullptr;
  const float2* kf = nullptr;      // (H, M+1): rfft(k, N) + D, natural frequency order, float32
  const float2* tw = nullptr;      // (M,): exp(-2*pi*i*j/N), j < M
  const uint8_t* keep = nullptr;   // nullable frequency-block mask, length first_block_count(M)
  float2* work = nullptr;          // (rows, M) complex scratch, only for M > fused_max_points()
  int64_t rows = 0;
  int64_t H = 0;
  int64_t L = 0;
  int64_t M = 0;                   // power of two, >= 16
  int64_t seg_out = 0;             // outputs per overlap-save segment (= L for a dense conv)
  int64_t halo = 0;                // Lk - 1 for a partial (segmented) conv, 0 for a dense one
  int reverse = 0;                 // 1: time-reversed load and store (backward: correlation)
  int fast = 0;                    // 0: bf16x3 split operands (about 1e-5 relative, default);
                                   // 1: one fp16 (fp16 inputs) or bf16 operand per mma
  DType dtype = DType::kFloat32;
};

// Largest complex size M one CTA holds in shared memory on the current device (float32 re/im).
int64_t fused_max_points();
// Number of frequency blocks a `keep` mask covers for complex size M (the first Monarch factor:
// block b holds the rfft bins k with k % count == b).
int first_block_count(int64_t M);
// Bytes of `work` scratch a launch needs (0 when the fused kernel covers M).
int64_t work_bytes(int64_t rows, int64_t M);
// Enqueue the convolution on `stream`; returns the first CUDA error (launch or configuration).
cudaError_t launch_conv(const ConvArgs& args, cudaStream_t stream);

}  // namespace genomeconv
