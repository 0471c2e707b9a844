"""Evo 2 exactness figures, per configuration and dtype, against the official code (vortex via
tests/evo2_official.py) on the random tiny models of tests/evo2_configs.py: max |error| / max
|value| of log-likelihoods, the final norm's output and named layers, float32 at 512 bp and at
the long length of tests/test_models_evo2.py, bfloat16 (ours and the official bf16 path, both
against official float32) at 2,048 bp. The tests assert the bounds; this writes the numbers.

    python benchmarks/evo2_exactness.py     # -> benchmarks/results/evo2_exactness.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import evo2_official as official  # noqa: E402
from benchmarks.harness import print_table, write_result  # noqa: E402
from evo2_configs import CONFIGS, dna_ids, random_model, rel_err  # noqa: E402
from genomeconv.models.families.evo2.layouts import build  # noqa: E402

LONG = {"types": 20_000, "1b": 8192, "7b-1m": 12_000}


def loglik_of(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)[:, :-1]
    return logp.gather(-1, ids[:, 1:, None])[..., 0]


def layers_of(model) -> tuple[str, ...]:
    cfg = model.config
    return (f"blocks.{cfg.hcl_layer_idxs[0]}.filter", f"blocks.{cfg.attn_layer_idxs[0]}"
            ".inner_mha_cls", f"blocks.{cfg.num_layers // 2}", "norm")


def errors(model, ids, logits, ref, layers) -> dict[str, float]:
    loglik, hidden = model.log_likelihoods(ids, with_hidden=True)
    out = {"loglik": rel_err(loglik, loglik_of(logits, ids)), "norm": rel_err(hidden, ref["norm"])}
    for layer in layers[:-1]:
        out[layer] = rel_err(model.hidden_states(ids, layer=layer), ref[layer])
    return out


def main() -> None:
    rows = []
    for name, values in CONFIGS.items():
        model = random_model(values)
        state = model.state_tensors()
        layers = layers_of(model)
        reference = official.build(values, state)
        for length in (512, LONG[name]):
            ids = dna_ids(length)
            logits, ref = official.forward(reference, ids, layers)
            got = errors(model, ids, logits, ref, layers)
            rows.append({"config": name, "L": length, "dtype": "float32", "contender":
                         "genomeconv", "max_rel_err": max(got.values()), "errors": got})
        if name == "types":
            continue
        ids = dna_ids(2048, seed=2)
        logits, ref = official.forward(reference, ids, layers)
        logits16, off16 = official.forward(official.build(values, state, bf16=True), ids, layers)
        ours = errors(build(model.config, state, "bf16", None, torch.bfloat16, None), ids,
                      logits, ref, layers)
        theirs = {"loglik": rel_err(loglik_of(logits16, ids), loglik_of(logits, ids)),
                  **{k: rel_err(off16[k], ref[k]) for k in layers}}
        for who, errs in (("genomeconv", ours), ("official", theirs)):
            rows.append({"config": name, "L": 2048, "dtype": "bfloat16", "contender": who,
                         "max_rel_err": max(errs.values()), "errors": errs})
    print_table(rows, ["config", "L", "dtype", "contender", "max_rel_err"])
    write_result("evo2_exactness", rows)


if __name__ == "__main__":
    main()
