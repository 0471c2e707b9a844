"""Shared fixtures: one real local Ray instance for the whole test run, and seeded RNGs."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
# Converted plain-gzip/GenBank inputs go to a cache folder: a private one for the test run (set
# before Ray starts, so workers and CLI subprocesses use it too), never the user's ~/.cache.
os.environ.setdefault("GENOMECONV_CACHE", tempfile.mkdtemp(prefix="gc_test_cache_"))


@pytest.fixture(scope="session")
def ray_local():
    """The test run's real local Ray (`helpers.session_ray`), for tests that use it in-process."""
    from helpers import session_ray

    return session_ray()


def pytest_sessionfinish(session, exitstatus):
    """Shut down the test run's Ray, if a test started it."""
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def rng():
    """A fresh numpy Generator seeded per test (reproducible, never zeros)."""
    import numpy as np

    return np.random.default_rng(12345)


@pytest.fixture
def one_thread():
    """One torch thread: tiny models train several times faster so when the CPU is shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
