// Thin torch binding of the Monarch convolution kernels (genomeconv._monarch_cuda).
//
// Validates tensors, takes the current stream and device, allocates the large-size scratch from
// the caching allocator and turns every CUDA error into a Python exception (TORCH_CHECK). The
// Python side (genomeconv/kernels/cuda.py) builds the cached filter spectrum and twiddle table.
#include <torch/extension.h>

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "monarch_conv.h"

namespace {

genomeconv::DType dtype_of(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32: return genomeconv::DType::kFloat32;
    case torch::kFloat16: return genomeconv::DType::kFloat16;
    case torch::kBFloat16: return genomeconv::DType::kBFloat16;
    default: TORCH_CHECK(false, "monarch conv: u must be float32, float16 or bfloat16, got ",
                         t.scalar_type());
  }
  return genomeconv::DType::kFloat32;
}

void check_like(const c10::optional<torch::Tensor>& t, const torch::Tensor& u, const char* name) {
  if (!t) return;
  TORCH_CHECK(t->device() == u.device(), "monarch conv: ", name, " must be on ", u.device());
  TORCH_CHECK(t->scalar_type() == u.scalar_type(), "monarch conv: ", name, " must be ",
              u.scalar_type());
  TORCH_CHECK(t->sizes() == u.sizes() && t->is_contiguous(), "monarch conv: ", name,
              " must be contiguous with u's shape ", u.sizes());
}

// y[b, h, :] = postgate * conv(pregate * u, k) with kf = rfft(k, 2M) + D (complex64, (H, M+1)).
torch::Tensor conv(const torch::Tensor& u, const c10::optional<torch::Tensor>& pregate,
                   const c10::optional<torch::Tensor>& postgate, const torch::Tensor& kf,
                   const torch::Tensor& tw, const c10::optional<torch::Tensor>& keep, int64_t M,
                   int64_t seg_out, int64_t halo, bool reverse, bool fast) {
  TORCH_CHECK(u.is_cuda() && u.dim() == 3 && u.is_contiguous(),
              "monarch conv: u must be a contiguous (B, H, L) CUDA tensor");
  const c10::cuda::CUDAGuard guard(u.device());
  const int64_t H = u.size(1), L = u.size(2);
  check_like(pregate, u, "pregate");
  check_like(postgate, u, "postgate");
  TORCH_CHECK(kf.device() == u.device() && kf.scalar_type() == torch::kComplexFloat &&
                  kf.is_contiguous() && kf.dim() == 2 && kf.size(0) == H && kf.size(1) == M + 1,
              "monarch conv: kf must be a contiguous complex64 (H, M+1) tensor on u's device");
  TORCH_CHECK(tw.device() == u.device() && tw.scalar_type() == torch::kComplexFloat &&
                  tw.is_contiguous() && tw.numel() == M,
              "monarch conv: tw must be a contiguous complex64 (M,) tensor on u's device");
  if (keep) {
    TORCH_CHECK(keep->device() == u.device() && keep->scalar_type() == torch::kUInt8 &&
                    keep->is_contiguous() &&
                    keep->numel() == genomeconv::first_block_count(M),
                "monarch conv: keep must be a contiguous uint8 tensor of ",
                genomeconv::first_block_count(M), " blocks on u's device");
  }
  auto y = torch::empty_like(u);
  const int64_t rows = u.size(0) * H;
  torch::Tensor work;
  const int64_t wbytes = genomeconv::work_bytes(rows, M);
  if (wbytes > 0) work = torch::empty({wbytes / 8, 2}, u.options().dtype(torch::kFloat32));

  genomeconv::ConvArgs a;
  a.u = u.data_ptr();
  a.pregate = pregate ? pregate->data_ptr() : nullptr;
  a.postgate = postgate ? postgate->data_ptr() : nullptr;
  a.y = y.data_ptr();
  a.kf = reinterpret_cast<const float2*>(kf.data_ptr());
  a.tw = reinterpret_cast<const float2*>(tw.data_ptr());
  a.keep = keep ? keep->data_ptr<uint8_t>() : nullptr;
  a.work = wbytes > 0 ? reinterpret_cast<float2*>(work.data_ptr()) : nullptr;
  a.rows = rows;
  a.H = H;
  a.L = L;
  a.M = M;
  a.seg_out = seg_out;
  a.halo = halo;
  a.reverse = reverse ? 1 : 0;
  a.fast = fast ? 1 : 0;
  a.dtype = dtype_of(u);
  const cudaError_t err = genomeconv::launch_conv(a, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "monarch conv launch failed (M=", M, ", L=", L, ", rows=",
              rows, "): ", cudaGetErrorString(err));
  const cudaError_t last = cudaGetLastError();
  TORCH_CHECK(last == cudaSuccess, "monarch conv: CUDA error: ", cudaGetErrorString(last));
  return y;
}

int64_t fused_max_points(const torch::Device& device) {
  const c10::cuda::CUDAGuard guard(device);
  return genomeconv::fused_max_points();
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "genomeconv Monarch FFT convolution kernels (tensor cores, sm_80 / sm_90a)";
  m.def("conv", &conv, "Causal (partial, sparse, reversed) Monarch FFT convolution",
        pybind11::arg("u"), pybind11::arg("pregate"), pybind11::arg("postgate"),
        pybind11::arg("kf"), pybind11::arg("tw"), pybind11::arg("keep"), pybind11::arg("M"),
        pybind11::arg("seg_out"), pybind11::arg("halo"), pybind11::arg("reverse"),
        pybind11::arg("fast"));
  m.def("fused_max_points", &fused_max_points,
        "Largest complex size one CTA holds in shared memory on a device");
}
