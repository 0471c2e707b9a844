"""workflows/: each file parsed and checked against what its tool requires.

The Ray cluster-launcher YAML is validated against Ray's own schema (autoscaler/ray-schema.json);
the genomeconv commands inside the KubeRay and SLURM files are parsed by the real CLI, so a renamed
option breaks this test rather than a cluster run.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import jsonschema
import pytest
import typer
import yaml

from genomeconv.cli import app

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
SBATCH_OPTIONS = {"job-name", "nodes", "ntasks-per-node", "ntasks", "cpus-per-task",
                  "gpus-per-node", "gpus", "gres", "mem", "time", "exclusive", "output", "error",
                  "partition", "account", "constraint", "qos"}


def check_command(argv: list[str]) -> typer.Context:
    """Parse a genomeconv command line with the real CLI (types and options checked, not run)."""
    assert argv[0] == "genomeconv", argv
    group = typer.main.get_command(app)
    parent = typer.Context(group, info_name="genomeconv")
    command = group.get_command(parent, argv[1])
    assert command is not None, f"unknown genomeconv command {argv[1]!r}"
    return command.make_context(argv[1], list(argv[2:]), parent=parent)


def _files(folder: str, pattern: str) -> list[Path]:
    files = sorted((WORKFLOWS / folder).glob(pattern))
    assert files, f"no {pattern} in workflows/{folder}"
    return files


@pytest.mark.parametrize("path", _files("ray-cluster", "*.yaml"), ids=lambda p: p.name)
def test_ray_cluster_launcher_yaml(path):
    import ray.autoscaler

    config = yaml.safe_load(path.read_text())
    ray_schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, ray_schema)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert any(t["resources"].get("GPU", 0) > 0 for t in workers.values()), "no GPU worker type"
    for t in workers.values():
        assert 0 <= t.get("min_workers", 0) <= t.get("max_workers", 0) <= config["max_workers"]
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token" in head_start


@pytest.mark.parametrize("path", _files("kuberay", "*.yaml"), ids=lambda p: p.name)
def test_kuberay_rayjob(path):
    job = yaml.safe_load(path.read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])
    spec = job["spec"]
    ctx = check_command(shlex.split(spec["entrypoint"]))
    assert spec["shutdownAfterJobFinishes"] is True
    yaml.safe_load(spec.get("runtimeEnvYAML", "{}"))
    cluster = spec["rayClusterSpec"]
    # Token auth: KubeRay's authOptions needs Ray >= 2.52.
    assert cluster["authOptions"]["mode"] == "token"
    assert tuple(int(x) for x in cluster["rayVersion"].split(".")[:2]) >= (2, 52)
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    gpus = 0
    for group in groups:
        # KubeRay requires string values in rayStartParams.
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        pod = group["template"]["spec"]
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            assert container["name"] and container["image"]
            assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes
            limits = container.get("resources", {}).get("limits", {})
            gpus += int(limits.get("nvidia.com/gpu", 0)) * group.get("replicas", 1)
    for worker in cluster["workerGroupSpecs"]:
        assert worker["groupName"]
        assert worker["minReplicas"] <= worker["replicas"] <= worker["maxReplicas"]
    assert ctx.params["num_workers"] * ctx.params["gpus_per_worker"] <= gpus


@pytest.mark.parametrize("path", _files("slurm", "*.sh"), ids=lambda p: p.name)
def test_slurm_batch_script(path):
    text = path.read_text()
    subprocess.run(["bash", "-n", str(path)], check=True)
    lines = text.splitlines()
    assert lines[0].startswith("#!/bin/bash")
    # sbatch reads #SBATCH lines only before the first command.
    header = []
    for line in lines[1:]:
        if line.strip() and not line.startswith("#"):
            break
        if line.startswith("#SBATCH"):
            header.append(line)
    assert header
    options = {}
    for line in header:
        match = re.fullmatch(r"#SBATCH --([a-z-]+)(?:=(\S+))?", line.strip())
        assert match, f"malformed: {line}"
        assert match[1] in SBATCH_OPTIONS, f"unknown sbatch option {match[1]}"
        options[match[1]] = match[2]
    late = [l for l in lines if l.startswith("#SBATCH") and l not in header]
    assert not late, f"#SBATCH after the first command is ignored by sbatch: {late}"
    assert int(options["nodes"]) >= 2 and ("gpus-per-node" in options or "gres" in options)
    code = "\n".join(l for l in lines if not l.lstrip().startswith("#"))
    joined = re.sub(r"\\\n\s*", " ", code)  # continuation lines joined
    assert "ray start --head" in joined and "ray start --block --address" in joined
    assert "--dashboard-host=127.0.0.1" in joined and "--temp-dir" in joined
    assert "ray stop" not in joined  # it would kill other users' Ray on shared nodes
    # Shell variables get the values they take in a job: the CLI must accept the result.
    nodes, gpus = int(options["nodes"]), int(options.get("gpus-per-node", 1))
    values = {"INPUT": "genome.fa", "GTF": "genes.gtf", "OUT": "out", "HEAD_IP": "10.0.0.1",
              "PORT": "6379", "WORKERS": str(nodes * gpus)}
    commands = [l.strip() for l in joined.splitlines() if l.strip().startswith("genomeconv ")]
    assert commands
    for line in commands:
        line = re.sub(r"\$\{?(\w+)\}?", lambda m: values[m[1]], line)
        ctx = check_command(shlex.split(line))
        assert ctx.params["num_workers"] * ctx.params["gpus_per_worker"] <= nodes * gpus


def test_check_command_catches_a_bad_option():
    with pytest.raises(Exception, match="no-such-option"):
        check_command(["genomeconv", "embed", "x.fa", "--no-such-option", "1"])
