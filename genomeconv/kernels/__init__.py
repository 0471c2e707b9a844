"""Long causal convolutions, HyenaDNA's operator: tensors in, tensors out (no genomics, no files).

Contract: `fftconv(u, k, D, pregate=, postgate=, method=)` is the one entry to every path and
computes y = postgate * (conv(x, k) + D * x), x = pregate * u, causal, for u (B, H, L), k (H, Lk)
(taps past L ignored), D (H,), gates broadcastable to u; it returns u's shape and dtype. Inputs are
float32, float64, bfloat16 or float16 and accumulate in float32 (float64 for float64:
validate.accumulation_dtype); every path but "sparse" (asked for with `keep`/`keep_fraction`: it
masks frequency blocks of the filter's spectrum) gives the same y within that rounding, and all have
autograd for u, k, D and both gates (`out=` in place is inference only). Bad arguments raise
TypeError or ValueError naming the argument. `method="auto"` (`choose_method`) picks among the exact
paths by device, filter length and cost. `LongConv` (modules.py) owns a filter and its cached
spectrum; `StreamingConv` (streaming.py) convolves an input given in chunks, carrying the state
between them; filter spectra live in a `SpectrumCache` (fft.py).

Paths: fft.py (one zero-padded real FFT, cached filter spectra, scipy/pocketfft on CPU, and autograd
for every FFT path), paired.py (the "fft" method's CPU inference form on ducc0: real transforms up
to 2^14 points, above them half-length complex FFTs with a paired pointwise step), partial.py
(overlap-save for short filters), sparse.py (frequency-block masks), monarch.py (the Monarch
decomposition the CUDA kernels follow), cuda.py (the fused kernels of csrc/), tiles.py (their
schedule replayed on the CPU), conv.py (`fftconv` and the automatic choice), validate.py (argument
checks). Beside the convolutions, linear.py holds the dense products a @ b.T the models' projections
use (`mm_t`). The figures behind the constants and choices are in
benchmarks/results/design_figures.json.
"""

from __future__ import annotations

from .conv import DIRECT_MAX_TAPS, METHODS, choose_method, fftconv
from .fft import SPECTRA, SpectrumCache
from .modules import LongConv
from .streaming import StreamingConv

__all__ = ["fftconv", "LongConv", "StreamingConv", "SpectrumCache", "SPECTRA", "METHODS",
           "choose_method", "DIRECT_MAX_TAPS"]
