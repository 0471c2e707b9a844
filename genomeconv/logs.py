"""Quiet by default: other libraries' INFO and WARNING lines are hidden unless the user asks for
them (-v or GENOMECONV_VERBOSE, see genomeconv.errors.verbose); their errors still show.

A newcomer reads every stderr line as a failure: Ray's "Started a local Ray instance", its token
warning, the core worker's error-level line about actor constructor arguments in the object
store, Ray Data's progress-bar and execution lines, DeepSpeed's "Setting accelerator to CPU",
htslib's index messages, library deprecation warnings. genomeconv's own lines (progress, the
cache line, results) are printed directly and are never affected.

`quiet_libraries()` is idempotent and cheap; it runs in the CLI process, again in
`runtime.connect` after Ray and Ray Data have configured their loggers (importing them resets
their levels), and in every model actor (pipelines/job.py), which on a local Ray instance also
inherits this process's GENOMECONV_VERBOSE and Ray log level.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator

from genomeconv.errors import verbose

# Loggers that other libraries configure with their own levels (so the root level alone does not
# reach them); DeepSpeed's logs straight to its own logger, with a handler of its own.
LIBRARY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "DeepSpeed",
                   "torch", "torch.distributed", "urllib3", "filelock", "fsspec",
                   "huggingface_hub", "py.warnings")
# C++ log threshold of Ray's processes started from here: its core worker prints error-level
# lines (actor constructor arguments in the object store) for conditions that are not errors.
# Setting it makes the driver print one INFO line as Ray starts: see `ray_start_output`.
RAY_BACKEND_LEVEL = ("RAY_BACKEND_LOG_LEVEL", "fatal")


class _BelowError(logging.Filter):
    """Drops records below ERROR (kept on a logger across a library's re-configuration)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


_FILTER = _BelowError()


def quiet_libraries() -> None:
    """Hide other libraries' INFO/WARNING output in this process, unless verbose()."""
    if verbose():
        return
    os.environ.setdefault(*RAY_BACKEND_LEVEL)
    logging.getLogger().setLevel(logging.ERROR)
    for name in (*LIBRARY_LOGGERS, *logging.Logger.manager.loggerDict):
        if name.startswith("genomeconv"):
            continue
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET and name not in LIBRARY_LOGGERS:
            continue  # inherits from a quieted ancestor
        logger.setLevel(logging.ERROR)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    warnings.filterwarnings("ignore", module=r"(?!genomeconv)")
    try:
        import pysam
    except ImportError:
        return
    pysam.set_verbosity(0)  # htslib's [W::...]/[E::...] lines; genomeconv reports the error


@contextlib.contextmanager
def ray_start_output() -> Iterator[None]:
    """Around ray.init: unless verbose(), what Ray's C++ side writes to stderr while starting
    (the log-level line above) is held back, and shown only if starting fails."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
