"""Loading the three checkpoint layouts, written here with the public key names, and saving."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from genomeconv.errors import InputError
from genomeconv.models import HyenaConfig, checkpoints, load
from helpers import TINY, random_ids, random_model


def public_state(model) -> dict[str, torch.Tensor]:
    """State dict as the public code holds it: z/t buffers included, freq under 1, 3 and 5."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, buf in model.named_buffers():
        state[name] = buf.clone()
    return state


def write_hf(model, directory, *, freq_once: bool) -> None:
    cfg = model.config
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({
        "model_type": "hyenadna", "d_model": cfg.d_model, "n_layer": cfg.n_layer,
        "d_inner": cfg.d_inner, "vocab_size": 12, "max_seq_len": cfg.max_seq_len,
        "emb_dim": cfg.emb_dim, "filter_order": cfg.filter_order, "num_inner_mlps": 2,
        "hyena_order": 2, "short_filter_order": 3, "activation_freq": 10,
        "layer_norm_epsilon": 1e-5, "pad_vocab_size_multiple": 8, "train_freq": True,
        "use_bias": True, "embed_dropout": 0.1, "hyena_dropout": 0.0}))
    state = {}
    for key, value in public_state(model).items():
        if freq_once and key.endswith((".3.freq", ".5.freq")):
            continue
        state[("" if key.startswith("lm_head") else "hyena.") + key] = value.contiguous()
    save_file(state, str(directory / "model.safetensors"))


def write_original(model, directory, *, checkpointed: bool, extra=None) -> None:
    cfg = model.config
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({
        "_name_": "lm", "d_model": cfg.d_model, "n_layer": cfg.n_layer, "d_inner": cfg.d_inner,
        "vocab_size": 12, "resid_dropout": 0.0, "embed_dropout": 0.1, "fused_mlp": False,
        "residual_in_fp32": True, "pad_vocab_size_multiple": 8,
        "layer": {"_name_": "hyena", "emb_dim": cfg.emb_dim, "filter_order": cfg.filter_order,
                  "local_order": 3, "l_max": cfg.max_seq_len, "modulate": True, "w": 10,
                  "lr": 6e-4, "wd": 0.0, "lr_pos_emb": 0.0}}))
    state = {}
    for key, value in public_state(model).items():
        if checkpointed:
            key = key.replace(".mixer.", ".mixer.layer.").replace(".mlp.", ".mlp.layer.")
        state["model." + key] = value
    state["model.decoder.output_transform.weight"] = torch.randn(2, cfg.d_model)  # a task head
    ckpt = {"state_dict": state, "epoch": 3, "global_step": 1000,
            "hyper_parameters": extra if extra is not None else {"lr": 6e-4}}
    torch.save(ckpt, directory / "weights.ckpt")


def outputs(model, ids):
    with torch.no_grad():
        return model(ids)


@pytest.mark.parametrize("freq_once", [True, False])
def test_hf_layout(tmp_path, rng, freq_once):
    model = random_model()
    write_hf(model, tmp_path / "hf", freq_once=freq_once)
    loaded = load(tmp_path / "hf")
    ids = random_ids(rng, 2, 30)
    assert torch.equal(outputs(loaded, ids), outputs(model, ids))
    assert loaded.config == model.config and not loaded.training
    assert loaded.model_id == str(tmp_path / "hf")


@pytest.mark.parametrize("checkpointed", [False, True])
def test_original_layout_with_foreign_pickled_objects(tmp_path, rng, checkpointed):
    model = random_model()
    # Lightning stores hyper-parameters as arbitrary objects; weights_only=True refuses them
    write_original(model, tmp_path / "orig", checkpointed=checkpointed,
                   extra=argparse.Namespace(lr=6e-4, layer={"l_max": 40}))
    loaded = load(str(tmp_path / "orig"))
    ids = random_ids(rng, 1, 45)
    assert torch.equal(outputs(loaded, ids), outputs(model, ids))
    assert loaded.config == model.config


class _Exploit:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


def test_original_layout_never_runs_pickled_code(tmp_path, rng):
    model = random_model()
    marker = tmp_path / "pwned"
    payload = _Exploit(exec, f"open({str(marker)!r}, 'w').close()")
    write_original(model, tmp_path / "a", checkpointed=False, extra={"payload": payload})
    loaded = load(tmp_path / "a")  # exec is replaced by an inert placeholder
    assert not marker.exists()
    ids = random_ids(rng, 1, 20)
    assert torch.equal(outputs(loaded, ids), outputs(model, ids))
    payload = _Exploit(os.system, f"touch {marker}")
    write_original(model, tmp_path / "b", checkpointed=False, extra={"payload": payload})
    with pytest.raises(ValueError, match="refusing"):  # torch blocks os/sys outright
        load(tmp_path / "b")
    assert not marker.exists()


def test_own_format_roundtrip_with_card_and_dtype(tmp_path, rng):
    model = random_model(seed=7)
    model.save(tmp_path / "ours", card="# tiny random model\n")
    meta = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert meta["format"] == "genomeconv-hyena" and meta["config_sha256"] == model.config_sha256
    assert meta["tokenizer"]["vocab"]["A"] == 7
    assert (tmp_path / "ours" / "MODEL_CARD.md").read_text() == "# tiny random model\n"
    loaded = load(tmp_path / "ours")
    ids = random_ids(rng, 2, 50)
    assert torch.equal(outputs(loaded, ids), outputs(model, ids))
    assert loaded.config_sha256 == model.config_sha256
    half = load(tmp_path / "ours", dtype=torch.bfloat16)
    assert half.lm_head.weight.dtype == torch.bfloat16


def test_bundled_model_and_missing_bundle(tmp_path, monkeypatch, rng):
    monkeypatch.setattr(checkpoints, "BUNDLED_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="bundled"):
        load()
    model = random_model(seed=2)
    model.save(tmp_path / "bundle")
    monkeypatch.setattr(checkpoints, "BUNDLED_DIR", tmp_path / "bundle")
    for arg in (None, "bundled"):
        loaded = load(arg)
        assert loaded.model_id == "genomeconv/bundled"
        ids = random_ids(rng, 1, 12)
        assert torch.equal(outputs(loaded, ids), outputs(model, ids))


def test_inconsistent_checkpoints_are_rejected(tmp_path):
    model = random_model()
    write_hf(model, tmp_path / "hf", freq_once=False)
    from safetensors.torch import load_file

    state = load_file(tmp_path / "hf" / "model.safetensors")
    key = "hyena.backbone.layers.0.mixer.filter_fn.implicit_filter.3.freq"
    original = state[key].clone()
    state[key] = original + 1.0
    save_file(state, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(ValueError, match="freq"):
        load(tmp_path / "hf")
    state[key] = original
    zkey = "hyena.backbone.layers.1.mixer.filter_fn.pos_emb.z"
    state[zkey] = torch.from_numpy(np.random.default_rng(1).normal(size=state[zkey].shape)).float()
    save_file(state, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(ValueError, match="positional"):
        load(tmp_path / "hf")


def test_missing_paths_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "nothing here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load(tmp_path / "empty")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(checkpoints.CheckpointDownloadError) as info:
        load("LongSafari/hyenadna-tiny-1k-seqlen-hf")
    assert "load('./hyenadna-tiny-1k-seqlen-hf')" in str(info.value)


def test_config_parsing_of_public_layouts(tmp_path):
    cfg = HyenaConfig(d_model=24, n_layer=1, d_inner=96, max_seq_len=70, filter_order=16)
    model = random_model(cfg)
    write_hf(model, tmp_path / "hf", freq_once=True)
    write_original(model, tmp_path / "orig", checkpointed=True)
    assert load(tmp_path / "hf").config == cfg
    assert load(tmp_path / "orig").config == cfg
    assert TINY != cfg


# ------------------------------------------------------------------ one-line load errors
def _own(tmp_path, name="m", seed=0):
    directory = tmp_path / name
    random_model(seed=seed).save(directory)
    return directory


def _edit_config(directory, **changes) -> None:
    meta = json.loads((directory / "config.json").read_text())
    meta["config"].update(changes)
    (directory / "config.json").write_text(json.dumps(meta))


def _one_line(info) -> str:
    text = str(info.value)
    assert "\n" not in text and isinstance(info.value, InputError)
    return text


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_safetensors_is_one_line(tmp_path, damage):
    directory = _own(tmp_path)
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[:len(data) // 2], "garbage": os.urandom(4096),
                         "empty": b""}[damage])
    with pytest.raises(InputError) as info:
        load(directory)
    assert _one_line(info).startswith(f"{weights}: unreadable safetensors file")


def test_corrupt_lightning_checkpoint_is_one_line(tmp_path):
    write_original(random_model(), tmp_path / "o", checkpointed=False)
    ckpt = tmp_path / "o" / "weights.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(InputError) as info:
        load(tmp_path / "o")
    assert _one_line(info).startswith(f"{ckpt}: unreadable checkpoint")


@pytest.mark.parametrize("key,value,text", [
    ("d_model", "16", "d_model = '16' is not an integer"),
    ("n_layer", 2.0, "n_layer = 2.0 is not an integer"),
    ("n_layer", True, "n_layer = True is not an integer"),
    ("activation_freq", float("nan"), "activation_freq = nan is not finite"),
    ("modulation_shift", float("inf"), "modulation_shift = inf is not finite"),
    ("layer_norm_epsilon", 0.0, "layer_norm_epsilon = 0.0 must be > 0"),
    ("layer_norm_epsilon", None, "layer_norm_epsilon = None is not a number"),
    ("d_inner", 0, "d_inner = 0 must be >= 1"),
    ("max_seq_len", 10 ** 12, "larger than"),
    ("emb_dim", 4, "emb_dim must be odd"),
    ("modulate", "yes", "modulate = 'yes' is not true or false"),
    ("bogus", 1, "unknown config keys ['bogus']"),
])
def test_bad_config_values_are_refused_before_a_model_is_built(tmp_path, key, value, text):
    directory = _own(tmp_path)
    _edit_config(directory, **{key: value})
    with pytest.raises(InputError) as info:
        load(directory)
    message = _one_line(info)
    assert message.startswith(f"{directory / 'config.json'}: ") and text in message


def test_public_layout_configs_are_checked_too(tmp_path):
    write_hf(random_model(), tmp_path / "hf", freq_once=True)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "activation_freq": "10"}))
    with pytest.raises(InputError, match="activation_freq = '10' is not a number"):
        load(tmp_path / "hf")
    del cfg["max_seq_len"]
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="no 'max_seq_len' in the config"):
        load(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text('{"d_model": 16,\n "n_layer": }')
    with pytest.raises(InputError) as info:
        load(tmp_path / "hf")
    assert "config.json, line 2: not valid JSON" in _one_line(info)


def test_weights_that_disagree_with_the_config(tmp_path):
    directory = _own(tmp_path)
    _edit_config(directory, d_model=32, d_inner=128)
    with pytest.raises(InputError, match="d_model 32 but the weights have 16"):
        load(directory)
    directory = _own(tmp_path, "layers")
    _edit_config(directory, n_layer=3)
    with pytest.raises(InputError, match="n_layer 3 but the weights have 2 layers"):
        load(directory)
    from safetensors.torch import load_file

    directory = _own(tmp_path, "keys")
    weights = directory / "model.safetensors"
    state = load_file(weights)
    dropped = sorted(k for k in state if k.startswith("backbone.layers.1.mlp"))
    for key in dropped:
        del state[key]
    state["backbone.extra.weight"] = torch.zeros(2)
    state["head.bias"] = torch.zeros(2)
    save_file(state, str(weights))
    with pytest.raises(InputError) as info:
        load(directory)
    message = _one_line(info)
    assert f"{len(dropped)} missing tensors ({dropped[0]}" in message
    assert "2 unexpected tensors (backbone.extra.weight, head.bias)" in message


def test_non_finite_weights_are_a_broken_model(tmp_path):
    from safetensors.torch import load_file

    directory = _own(tmp_path)
    state = load_file(directory / "model.safetensors")
    state["backbone.ln_f.weight"][3] = float("nan")
    save_file(state, str(directory / "model.safetensors"))
    with pytest.raises(InputError, match=r"1 tensors hold NaN or inf \(backbone.ln_f.weight\)"):
        load(directory)


def test_local_paths_shaped_like_hub_ids(tmp_path, monkeypatch):
    """A missing path is a hub id only when nothing says it is local."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for name in ("models/tiny", "./owner/name", "../owner/name", "~/owner/name",
                 str(tmp_path / "owner" / "name")):
        assert not checkpoints.is_hub_id(name)
        with pytest.raises(checkpoints.ModelNotFoundError) as info:
            load(name)
        assert "no such model folder" in _one_line(info)
        assert isinstance(info.value, FileNotFoundError)
    assert checkpoints.is_hub_id("LongSafari/hyenadna-tiny-1k-seqlen-hf")
    with pytest.raises(InputError, match="pass the model folder, not a file"):
        (tmp_path / "file").write_text("x")
        load(tmp_path / "file")


def test_offline_hub_id_is_one_line(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(checkpoints.CheckpointDownloadError) as info:
        load("someone/some-model")
    assert "could not download 'someone/some-model'" in _one_line(info)


class _Shell:
    """Pickles as a call of os.system: what a malicious checkpoint holds."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _zip_with_pickle(path, obj, protocol: int) -> None:
    """A torch zip-format file whose data.pkl is `obj` pickled with `protocol`."""
    import pickle
    import zipfile

    torch.save({"state_dict": {}}, path)
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in files if n.endswith("data.pkl"))
    files[pkl] = pickle.dumps(obj, protocol=protocol)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            z.writestr(name, data)


CHECKPOINT_FORMS = {
    "zip, protocol 4, os.system": (lambda p, m: _zip_with_pickle(p, {"state_dict": _Shell(m)}, 4),
                                   "refusing to unpickle this zip-format file"),
    "zip, protocol 2, os.system": (lambda p, m: _zip_with_pickle(p, {"state_dict": _Shell(m)}, 2),
                                   "GLOBAL posix.system"),
    "legacy, os.system": (lambda p, m: torch.save({"state_dict": {}, "x": _Shell(m)}, p,
                                                  _use_new_zipfile_serialization=False),
                          "refusing to unpickle this legacy-format (not zip) file"),
    "plain pickle": (lambda p, m: p.write_bytes(__import__("pickle").dumps(_Shell(m))),
                     "refusing to unpickle"),
    "raw tensor": (lambda p, m: torch.save(torch.zeros(3), p), "it holds Tensor"),
    "raw legacy tensor": (lambda p, m: torch.save(torch.zeros(3), p,
                                                  _use_new_zipfile_serialization=False),
                          "it holds Tensor"),
    "state dict without state_dict": (lambda p, m: torch.save({"w": torch.zeros(3)}, p),
                                      "no 'state_dict' of tensors"),
    "empty": (lambda p, m: p.write_bytes(b""), "unreadable checkpoint (empty file)"),
    "random bytes": (lambda p, m: p.write_bytes(os.urandom(512)), ""),  # any one-line reason
}


@pytest.mark.parametrize("form", sorted(CHECKPOINT_FORMS))
def test_every_checkpoint_form_fails_in_one_line_naming_the_file(tmp_path, form):
    """A zip-format weights.ckpt holding a protocol-4 pickle gave an UnpicklingError traceback,
    legacy and raw ones errors that did not name the file (issue 30): each form is one line
    naming it, exit 2, and nothing from it runs."""
    from typer.testing import CliRunner

    from genomeconv.cli import app
    from helpers import write_fasta

    write_original(random_model(), tmp_path / "m", checkpointed=False)
    ckpt, marker = tmp_path / "m" / "weights.ckpt", tmp_path / "pwned"
    make, text = CHECKPOINT_FORMS[form]
    make(ckpt, marker)
    fasta = write_fasta(tmp_path / "g.fa", {"c": "ACGT" * 50})
    result = CliRunner().invoke(app, ["embed", fasta, "--model", str(tmp_path / "m"),
                                      "--out", str(tmp_path / "o")])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {ckpt}: ") and text in lines[0]
    assert not marker.exists()


def test_load_torch_file_allows_named_globals_only(tmp_path):
    """The reusable loader (an Evo 2 .pt reader calls it too): a class the caller allows is
    rebuilt, any other is refused naming the file."""
    from genomeconv.models.weights import load_torch_file

    path = tmp_path / "x.pt"
    torch.save({"args": argparse.Namespace(d=3), "w": torch.ones(2)}, path)
    with pytest.raises(InputError, match=f"^{path}: refusing to unpickle.*argparse.Namespace"):
        load_torch_file(path)
    loaded = load_torch_file(path, allowed_globals=[argparse.Namespace])
    assert loaded["args"].d == 3 and torch.equal(loaded["w"], torch.ones(2))
    with pytest.raises(InputError, match="file not found"):
        load_torch_file(tmp_path / "none.pt")


def test_a_path_that_no_repository_can_be_named_is_not_downloaded(tmp_path, monkeypatch):
    """--model x/.. said 'could not download from the Hugging Face hub' (issue 30): the hub
    does not allow that name, so it is a missing local folder."""
    monkeypatch.chdir(tmp_path)
    for name in ("x/..", "x/.hidden", "a--b/model", "owner/name-"):
        assert not checkpoints.is_hub_id(name)
        with pytest.raises(checkpoints.ModelNotFoundError) as info:
            load(name)
        assert _one_line(info).startswith(f"{name}: no such model folder (and not a hub id")
