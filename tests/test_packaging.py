"""The wheel holds everything genomeconv reads at run time: built from a copy of the sources,
installed into a fresh virtual environment (dependencies from this interpreter's site-packages,
nothing downloaded) and run from a folder outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("genomeconv", "csrc", "pyproject.toml", "setup.py", "README.md", "LICENSE")
DEEPSPEED_NAMES = sorted(p.stem for p in
                         (ROOT / "genomeconv" / "data" / "deepspeed").glob("*.json"))

RESOLVE = """
import json, sys
from pathlib import Path
import genomeconv
from genomeconv.pipelines.deepspeed_engine import CONFIG_DIR, load_deepspeed_config
names = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
for name in names:
    gas = int(json.loads((CONFIG_DIR / f"{name}.json").read_text()).get(
        "gradient_accumulation_steps", 1))
    assert load_deepspeed_config(name, batch_size=4 * gas, world_size=1)["train_batch_size"]
print(json.dumps({"file": genomeconv.__file__, "configs": names}))
"""


def run(args: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """Build the wheel from a copy of the sources and install it into a fresh venv."""
    work = tmp_path_factory.mktemp("packaging")
    src = work / "src"
    src.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (ROOT / name).is_dir() else {}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["GENOMECONV_BUILD_CUDA"] = "0"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
         work / "dist", src], work, env)
    (wheel,) = (work / "dist").glob("genomeconv-*.whl")
    venv = work / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], work, env)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
         wheel], work, env)
    # Dependencies: this interpreter's site-packages, after the venv's own (which holds genomeconv)
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    return {"wheel": wheel, "venv": venv, "python": python, "env": env, "cwd": work}


def test_wheel_carries_runtime_files_and_license(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    for name in DEEPSPEED_NAMES:
        assert f"genomeconv/data/deepspeed/{name}.json" in names
    for name in ("lambda.fa.gz", "lambda.fa.gz.fai", "lambda.fa.gz.gzi", "lambda.gtf"):
        assert f"genomeconv/data/sample/{name}" in names
    assert "genomeconv/models/bundled/model.safetensors" in names
    for name in ("configs/evo2-1b-8k.yml", "configs/evo2-7b-1m.yml", "MODEL_CARD.md"):
        assert f"genomeconv/models/families/evo2/{name}" in names  # Evo 2's published configs
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: Apache-2.0" in zipfile.ZipFile(installed["wheel"]).read(
        meta).decode()


def test_installed_copy_runs_outside_the_checkout(installed):
    env, cwd, venv = installed["env"], installed["cwd"], installed["venv"]
    resolved = json.loads(run([installed["python"], "-c", RESOLVE], cwd, env).stdout)
    assert Path(resolved["file"]).is_relative_to(venv)
    assert resolved["configs"] == DEEPSPEED_NAMES and len(DEEPSPEED_NAMES) >= 6
    help_text = run([venv / "bin" / "genomeconv", "finetune", "--help"], cwd, env).stdout
    assert "--deepspeed-config" in help_text
    sample = Path(resolved["file"]).parent / "data" / "sample"
    env = {**env, "GENOMECONV_CACHE": str(cwd / "cache")}
    out = run([venv / "bin" / "genomeconv", "embed", sample / "lambda.fa.gz", "--gtf",
               sample / "lambda.gtf", "--out", cwd / "emb"], cwd, env).stdout
    assert "8 items" in out
    import pyarrow.parquet as pq

    table = pq.read_table(cwd / "emb" / "embeddings")
    assert table.num_rows == 8 and sorted(table["gene_id"].to_pylist())[0] == "lambda_orf01"
