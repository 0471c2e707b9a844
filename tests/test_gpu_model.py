"""HyenaDNA on a CUDA device through the fused kernels: forward, bounded-memory inference and
log-likelihoods equal to the CPU path, bf16 within 2x the torch.fft path's error, gradients
equal to the torch.fft path's, bf16 training steps, and the bundled checkpoint on the GPU.

The torch.fft path on the same GPU is the kernels switched off (GENOMECONV_DISABLE_CUDA_KERNELS,
read on every call). cuDNN's TF32 is switched off for the float32 comparisons (the short conv
would otherwise run in TF32 on the GPU only). Skipped without a CUDA device; with one, a missing
extension fails them.
"""

from __future__ import annotations

import copy

import pytest
import torch

from genomeconv.kernels import choose_method, cuda
from genomeconv.models import HyenaConfig, HyenaDNA, inference, load

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SMALL = HyenaConfig(d_model=64, n_layer=2, d_inner=256, max_seq_len=4098)


@pytest.fixture(autouse=True)
def exact_float32():
    """Kernels built (fails otherwise), cuDNN TF32 off for the duration of a test."""
    cuda.require()
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


def random_ids(B: int, L: int, seed: int) -> torch.Tensor:
    """Random A/C/G/T token ids (7..10)."""
    return torch.randint(7, 11, (B, L), generator=torch.Generator().manual_seed(seed))


def pair(config: HyenaConfig, seed: int = 0) -> tuple[HyenaDNA, HyenaDNA]:
    """The same random model on the CPU and on the GPU."""
    torch.manual_seed(seed)
    model = HyenaDNA(config).eval()
    cpu = copy.deepcopy(model)
    return cpu, model.cuda()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("L,max_seq_len", [(1000, 4098), (4097, 4098), (5000, 1026)])
def test_forward_and_inference_equal_the_cpu_path(L, max_seq_len):
    """model(ids), hidden_states and log-likelihoods on the GPU (dense, and partial past
    max_seq_len) equal the CPU path's in float32."""
    cpu, gpu = pair(HyenaConfig(**{**SMALL.to_dict(), "max_seq_len": max_seq_len}))
    ids = random_ids(2, L, L)
    with torch.no_grad():
        want = cpu(ids)
        got = gpu(ids.cuda())
    assert got.is_cuda and got.dtype == torch.float32
    assert rel(got, want) < 1e-4
    hidden, loglik = inference.hidden_and_loglik(gpu, ids)
    want_h, want_ll = inference.hidden_and_loglik(cpu, ids)
    assert rel(hidden, want_h) < 1e-4 and rel(loglik, want_ll) < 1e-4
    assert rel(hidden, got) < 1e-4


def test_bf16_inference_within_twice_the_torch_fft_error(monkeypatch):
    cpu, gpu = pair(SMALL, seed=1)
    ids = random_ids(1, 4000, 2)
    want = inference.hidden_states(cpu, ids)
    kernels = inference.hidden_states(gpu, ids, dtype=torch.bfloat16)
    monkeypatch.setenv("GENOMECONV_DISABLE_CUDA_KERNELS", "1")
    assert choose_method(torch.ones(1, 1, 8, device="cuda", dtype=torch.bfloat16), 8) != "cuda"
    plain = inference.hidden_states(gpu, ids, dtype=torch.bfloat16)
    assert rel(kernels, want) <= 2 * rel(plain, want) + 1e-4


def loss_and_grads(model: HyenaDNA, ids: torch.Tensor, autocast: bool) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = -model.autograd_log_likelihoods(ids).mean()
    loss.backward()
    return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters()
                         if p.grad is not None}


def test_training_gradients_equal_the_torch_fft_path(monkeypatch):
    """Every parameter's gradient through the kernels' backward equals the torch.fft path's
    in float32; under bf16 autocast, within 2x its error against float32."""
    _, gpu = pair(SMALL, seed=3)
    gpu.train()
    ids = random_ids(2, 3000, 4).cuda()
    loss_k, grads_k = loss_and_grads(gpu, ids, autocast=False)
    bf_loss_k, bf_grads_k = loss_and_grads(gpu, ids, autocast=True)
    monkeypatch.setenv("GENOMECONV_DISABLE_CUDA_KERNELS", "1")
    loss_t, grads_t = loss_and_grads(gpu, ids, autocast=False)
    bf_loss_t, bf_grads_t = loss_and_grads(gpu, ids, autocast=True)
    assert grads_k.keys() == grads_t.keys() == bf_grads_k.keys()
    assert any("filter_fn" in name for name in grads_k)  # the long filter learns through dk
    assert abs(loss_k - loss_t) < 1e-5 * abs(loss_t)
    for name in grads_t:
        assert torch.isfinite(bf_grads_k[name]).all(), name
        assert rel(grads_k[name], grads_t[name]) < 1e-3, name
        assert rel(bf_grads_k[name], grads_t[name]) <= (
            2 * rel(bf_grads_t[name], grads_t[name]) + 1e-3), name
    assert abs(bf_loss_k - loss_t) <= 2 * abs(bf_loss_t - loss_t) + 1e-3


def test_bf16_training_steps_lower_the_loss():
    """Plain AdamW under bf16 autocast, the long convolutions' forward and backward on the
    kernels: finite losses that fall on a fixed batch."""
    _, gpu = pair(SMALL, seed=5)
    gpu.train()
    ids = random_ids(4, 2048, 6).cuda()
    opt = torch.optim.AdamW(gpu.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = -gpu.autograd_log_likelihoods(ids).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.05, losses


def test_bundled_checkpoint_embeds_the_same_on_the_gpu():
    seq = "ACGTTGCAAGGCTTACCGATNNACGT" * 40
    cpu = load()
    gpu = load(device="cuda")
    assert next(gpu.parameters()).is_cuda
    assert rel(gpu.embed(seq), cpu.embed(seq)) < 1e-4
