"""Loading Evo 2 checkpoints: the release layout (config.yml + NAME.pt or its byte shards, with
Transformer Engine `_extra_state` entries and the conversion leftovers), hub ids (through a
stand-in for huggingface_hub that serves a local folder laid out like the hub's; offline is one
line), genomeconv's own folders, and what is refused: a malicious pickle (nothing runs), wrong,
missing, misshapen or non-finite tensors, unknown config keys."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch
import yaml

from evo2_configs import CONFIGS, dna_ids, random_model
from genomeconv.errors import InputError
from genomeconv.models import checkpoints, load
from genomeconv.models.families.evo2 import Evo2, layouts
from genomeconv.models.families.evo2.config import HUB_CONFIGS, published_config
from genomeconv.pipelines.manifest import model_fingerprint

VALUES = CONFIGS["types"]


@pytest.fixture(scope="module")
def model() -> Evo2:
    return random_model(VALUES, seed=11)


def release_state(model: Evo2) -> dict:
    """The model's state dict as the releases store it: bf16 but the poles and residues, with
    Transformer Engine extra states, a tied `unembed.weight` and the hcl time buffers."""
    state = {k: (v if k.endswith(("log_poles", "residues", "inv_freq")) else v.bfloat16())
             for k, v in model.state_tensors().items()}
    for key in ("blocks.0.projections._extra_state", "blocks.3.mixer.dense._extra_state"):
        state[key] = io.BytesIO(b"TE fp8 metadata, never read")
    state["unembed.weight"] = state["embedding_layer.weight"]
    state["blocks.2.mixer.mixer.filter.t"] = torch.arange(16.0)[None, None]
    return state


def write_release(folder: Path, state: dict, *, shards: int = 0, config: dict | None = VALUES,
                  name: str = "model") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (folder / "config.yml").write_text(yaml.safe_dump(config))
    path = folder / f"{name}.pt"
    torch.save(state, path)
    if shards:
        data = path.read_bytes()
        cut = len(data) // shards + 1
        for i in range(shards):
            (folder / f"{name}.pt.part{i}").write_bytes(data[i * cut:(i + 1) * cut])
        path.unlink()
    return folder


def same_outputs(a: Evo2, b: Evo2, dtype=torch.float32) -> None:
    ids = dna_ids(700, seed=12)
    assert torch.equal(a.hidden_states(ids, dtype=dtype), b.hidden_states(ids, dtype=dtype))


@pytest.mark.parametrize("shards", [0, 3])
def test_release_folder(tmp_path, model, shards):
    state = release_state(model)
    loaded = load(write_release(tmp_path / "evo2", state, shards=shards))
    assert isinstance(loaded, Evo2) and loaded.config == model.config
    assert loaded.blocks[1].projections.weight.dtype == torch.bfloat16  # the file's dtype
    assert loaded.blocks[2].filter.log_poles.dtype == torch.float32  # poles stay float32
    reference = layouts.build(model.config, layouts.release_state(state, model.config, tmp_path),
                              "ref", None, None, tmp_path)
    same_outputs(loaded, reference)
    as_float = load(tmp_path / "evo2", dtype=torch.float32)
    assert as_float.blocks[1].projections.weight.dtype == torch.float32


def test_malicious_pickle_refused(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    folder = write_release(tmp_path / "evil", {"embedding_layer.weight": Payload()})
    with pytest.raises(InputError, match="refusing to unpickle"):
        load(folder)
    assert not marker.exists()


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("blocks.1.filter.h"), "1 missing tensors \\(blocks.1.filter.h\\)"),
    (lambda s: s.update({"blocks.1.filter.hh": s.pop("blocks.1.filter.h")}),
     "unexpected tensors \\(blocks.1.filter.hh\\)"),
    (lambda s: s.update({"blocks.2.filter.D": torch.zeros(47)}),
     "wrong shape \\(blocks.2.filter.D \\(47,\\)"),
    (lambda s: s["blocks.0.mlp.l1.weight"].view(-1)[5].fill_(float("nan")),
     "NaN or inf \\(blocks.0.mlp.l1.weight\\)"),
    (lambda s: s.update({"unembed.weight": torch.zeros(3, 3)}), "unembed.weight \\(3, 3\\)"),
    (lambda s: s.update({"blocks.0.x": [1, 2]}), "'blocks.0.x' holds a list"),
])
def test_bad_weights_refused(tmp_path, model, change, message):
    state = release_state(model)
    change(state)
    with pytest.raises(InputError, match=message) as err:
        load(write_release(tmp_path / "bad", state))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("change, message", [
    ({"use_new_gating": True}, "unknown Evo 2 config keys \\['use_new_gating'\\]"),
    ({"proj_groups": 2}, "proj_groups = 2"),
    ({"num_layers": "6"}, "num_layers = .6. is not an integer"),
    ({"hcs_filter_groups": 5}, "hcs_filter_groups 5 must divide"),
])
def test_bad_config_refused(tmp_path, model, change, message):
    folder = write_release(tmp_path / "cfg", release_state(model), config={**VALUES, **change})
    with pytest.raises(InputError, match=message):
        load(folder)


def test_hub_ids(tmp_path, model, monkeypatch):
    """A hub id downloads only the checkpoint's files and reads them with the packaged config
    (a tiny one here, standing in for evo2-7b-1m.yml); offline, one line."""
    hub = write_release(tmp_path / "hub", release_state(model), shards=2, config=None,
                        name="evo2_7b")
    asked = {}

    def snapshot_download(repo_id, allow_patterns):
        asked.update(repo_id=repo_id, patterns=list(allow_patterns))
        return str(hub)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(layouts, "published_config",
                        lambda name: model.config if name == "evo2-7b-1m.yml" else None)
    loaded = load("arcinstitute/evo2_7b")
    assert asked == {"repo_id": "arcinstitute/evo2_7b",
                     "patterns": ["evo2_7b.pt", "evo2_7b.pt.part*"]}
    assert loaded.model_id == "arcinstitute/evo2_7b" and loaded.config == model.config
    same_outputs(loaded, load(hub))

    def offline(repo_id, allow_patterns):
        raise OSError("We have no connection to the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(checkpoints.CheckpointDownloadError, match="evo2_7b.pt") as err:
        load("arcinstitute/evo2_7b")
    assert "\n" not in str(err.value)


def test_unknown_name_without_config(tmp_path, model):
    folder = write_release(tmp_path / "x", release_state(model), config=None, name="mine")
    with pytest.raises(InputError, match="no config.yml beside mine.pt"):
        load(folder)


def test_saved_folder_round_trip(tmp_path, model):
    model.save(tmp_path / "saved")
    loaded = load(tmp_path / "saved")
    assert isinstance(loaded, Evo2) and loaded.config_sha256 == model.config_sha256
    assert "No FP8" in (tmp_path / "saved" / "MODEL_CARD.md").read_text()
    same_outputs(loaded, model)


def test_fingerprint_covers_shards(tmp_path, model):
    folder = write_release(tmp_path / "fp", release_state(model), shards=2)
    before = model_fingerprint(str(folder), model.config_sha256)["model_weights_sha256"]
    part = folder / "model.pt.part1"
    data = bytearray(part.read_bytes())
    data[-1] ^= 1
    part.write_bytes(bytes(data))
    after = model_fingerprint(str(folder), model.config_sha256)["model_weights_sha256"]
    assert before != after


def test_published_configs():
    facts = {"arcinstitute/evo2_1b_base": (1920, 25, (3, 10, 17, 24), 1.0, 8192),
             "arcinstitute/evo2_7b": (4096, 32, (3, 10, 17, 24, 31), 128.0, 1048576),
             "arcinstitute/evo2_7b_262k": (4096, 32, (3, 10, 17, 24, 31), 32.0, 262144),
             "arcinstitute/evo2_40b_base": (8192, 50, (3, 10, 17, 24, 31, 35, 42, 49), 1.0, 8192)}
    for repo, name in HUB_CONFIGS.items():
        c = published_config(name)
        assert c.column_split and c.interleave and c.evo2_style_activations
        if repo in facts:
            assert (c.hidden_size, c.num_layers, c.attn_layer_idxs, c.rotary_emb_scaling_factor,
                    c.max_seqlen) == facts[repo]
    assert set(checkpoints.families()["evo2"].hub_files) == set(HUB_CONFIGS)
