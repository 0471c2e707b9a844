"""Build hook for the optional CUDA extension (genomeconv._monarch_cuda); metadata lives in
pyproject.toml.

The extension (csrc/monarch_conv.cu + csrc/binding.cpp) is built when torch has CUDA and nvcc is
found, or when GENOMECONV_BUILD_CUDA=1 (then a failure to build is an error); with
GENOMECONV_BUILD_CUDA=0, or without CUDA, the pure-Python package is installed and
genomeconv.kernels falls back to its PyTorch paths. Real SASS for sm_80 and sm_90a (the
Hopper-specific target), plus PTX for newer GPUs; GENOMECONV_CUDA_ARCHS="80;90a" overrides the list.
Because it imports torch, a build with the extension needs `pip install --no-build-isolation`.
"""

from __future__ import annotations

import os
import shutil

from setuptools import setup


def _wanted() -> bool:
    flag = os.environ.get("GENOMECONV_BUILD_CUDA", "").strip()
    if flag == "0":
        return False
    if flag == "1":
        return True
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        return False
    return torch.version.cuda is not None and (CUDA_HOME is not None or shutil.which("nvcc"))


def _extension_kwargs() -> dict:
    try:
        from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    except ImportError as exc:
        raise RuntimeError("GENOMECONV_BUILD_CUDA=1 needs torch in the build environment: "
                           "pip install --no-build-isolation -e .") from exc

    archs = os.environ.get("GENOMECONV_CUDA_ARCHS", "80;90a").split(";")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs if a]
    newest = archs[-1].rstrip("a")
    gencode.append(f"-gencode=arch=compute_{newest},code=compute_{newest}")  # PTX for later GPUs
    ext = CUDAExtension(
        name="genomeconv._monarch_cuda",
        sources=["csrc/binding.cpp", "csrc/monarch_conv.cu"],
        include_dirs=[os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")],
        extra_compile_args={"cxx": ["-O3", "-std=c++17"],
                            "nvcc": ["-O3", "-std=c++17", *gencode]},
    )
    return {"ext_modules": [ext], "cmdclass": {"build_ext": BuildExtension}}


setup(**(_extension_kwargs() if _wanted() else {}))
