"""genomeconv's error types: the one base class that the CLI's error boundary turns into a one-line
message and exit code 2, and the switch that shows tracebacks and other libraries' logs.

Raise `InputError` for anything the user can fix (a bad file, option or model folder), naming the
file, record and line where there is one; anything else that escapes is a bug and keeps its
traceback. `InputError` subclasses ValueError so that callers that caught ValueError still work.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

VERBOSE_ENV = "GENOMECONV_VERBOSE"  # "1": tracebacks and other libraries' INFO/WARNING lines
# OSErrors without a class of their own that a path or its disk causes: a symlink loop, a name
# too long, a full disk or quota, a read-only file system, a file over the size limit.
PATH_ERRNOS = frozenset({errno.ELOOP, errno.ENAMETOOLONG, errno.ENOSPC, errno.EDQUOT,
                         errno.EROFS, errno.EFBIG})


class GenomeconvError(Exception):
    """Base class of every error genomeconv raises on purpose."""


class InputError(GenomeconvError, ValueError):
    """Bad input or options: reported as one line, exit code 2, before any expensive work."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None,
                 record: str | None = None, line: int | None = None) -> None:
        where = [str(p) for p in (path,) if p is not None]
        if record is not None:
            where.append(f"record {record}")
        if line is not None:
            where.append(f"line {line}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.path, self.record, self.line = path, record, line


def verbose() -> bool:
    """Whether the user asked for tracebacks and other libraries' logs (-v or GENOMECONV_VERBOSE);
    an environment variable so that Ray workers started by this process see it too."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Around writing an output file: an OSError that its disk or folder causes (full, over
    quota, read-only, no permission) becomes an InputError naming `path`, the file the user
    would look for (not a temporary name); other OSErrors are bugs and pass unchanged."""
    try:
        yield
    except OSError as exc:
        if not (isinstance(exc, PermissionError) or exc.errno in PATH_ERRNOS):
            raise
        raise InputError(f"cannot write ({exc.strerror or exc}); what was written before is "
                         "kept: make room or pass another --out, then rerun to resume",
                         path=path) from None
