"""The Ray connection, shared by every job: local by default, an existing cluster on request.

`connect()` is the only place genomeconv calls `ray.init`. Without an address (and without
RAY_ADDRESS) it starts a private local instance bound to 127.0.0.1; with one, it joins that cluster.
"""

from __future__ import annotations

import os
import platform
from typing import Any

DEFAULT_HOST = "127.0.0.1"


def connect(address: str | None = None, *, num_cpus: int | None = None,
            temp_dir: str | None = None) -> dict[str, Any]:
    """Connect to Ray (idempotent) and return the cluster's resources.

    address: a cluster address ("auto", "HOST:PORT"); None uses RAY_ADDRESS if set, else starts a
    local instance whose servers listen on 127.0.0.1 only.
    """
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False}
        if address is None:
            kwargs.update(num_cpus=num_cpus, include_dashboard=False,
                          dashboard_host=DEFAULT_HOST, _node_ip_address=DEFAULT_HOST)
            if temp_dir:
                kwargs["_temp_dir"] = temp_dir
        else:
            kwargs["address"] = address
        ray.init(**kwargs)
        _quiet_progress()
    return ray.cluster_resources()


def _quiet_progress() -> None:
    """Ray Data's own progress bars would fight ours; genomeconv reports progress itself."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def describe_environment() -> dict[str, str]:
    """Versions, devices and Ray status, for `genomeconv info` and benchmark records."""
    import genomeconv

    info: dict[str, str] = {
        "genomeconv": genomeconv.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": str(os.cpu_count()),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["devices"] = "cpu, " + ", ".join(f"cuda:{i} {n}" for i, n in enumerate(names))
        else:
            info["devices"] = "cpu"
    except ImportError:
        info["torch"] = "not installed"
    for name in ("ray", "pysam", "pyarrow", "duckdb", "deepspeed"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except Exception as exc:  # deepspeed may fail to import without its accelerator settings
            info[name] = f"unavailable ({type(exc).__name__})"
    try:
        import ray

        if ray.is_initialized():
            info["ray status"] = f"connected: {ray.cluster_resources()}"
        elif os.environ.get("RAY_ADDRESS"):
            info["ray status"] = f"not connected (RAY_ADDRESS={os.environ['RAY_ADDRESS']})"
        else:
            info["ray status"] = "not connected (jobs start a local instance on 127.0.0.1)"
    except ImportError:
        pass
    return info
