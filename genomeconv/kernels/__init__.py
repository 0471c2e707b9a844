"""Long causal convolutions (HyenaDNA's operator): `fftconv`, `LongConv`, `StreamingConv`.

Paths: fft.py (one zero-padded real FFT, cached filter spectra, scipy/pocketfft on CPU, and
autograd for every FFT path), paired.py (the "fft" method's CPU inference form: half-length
complex FFTs through ducc0 with a paired pointwise step),
partial.py (overlap-save for short filters), streaming.py (chunked inputs), conv.py
(`fftconv` and the automatic choice of path), sparse.py (frequency-block masks),
monarch.py (the Monarch decomposition the CUDA kernels follow), cuda.py (the fused kernels).
"""

from __future__ import annotations

from .conv import DIRECT_MAX_TAPS, METHODS, choose_method, fftconv
from .fft import SPECTRA, SpectrumCache
from .modules import LongConv
from .streaming import StreamingConv

__all__ = ["fftconv", "LongConv", "StreamingConv", "SpectrumCache", "SPECTRA", "METHODS",
           "choose_method", "DIRECT_MAX_TAPS"]
