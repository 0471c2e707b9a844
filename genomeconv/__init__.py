"""genomeconv: long-convolution DNA language models over whole genes and genomes."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("genomeconv")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.1.0"

__all__ = ["__version__"]
