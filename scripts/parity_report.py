"""Print the measured parity errors per model: logits and gradients, jaxcnn vs PyTorch.

Usage: python scripts/parity_report.py [--json PATH]

Runs on whatever device both frameworks see (a GPU when present), once with
full float32 precision on both sides and once with each framework's default
(TF32 convolutions/matmuls on NVIDIA GPUs), to show why the parity tests pin
precision. The bounds these numbers are held to live in parity/tolerances.py.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import jax
import numpy as np
import torch

from jaxcnn import models, report
from jaxcnn.cli import run_main
from parity.harness import (
    TORCH_DEVICE,
    as_jax,
    jax_grads,
    make_pair,
    random_batch,
    to_numpy,
    torch_grads,
    torch_input,
)


def set_precision(full: bool) -> None:
    jax.config.update("jax_default_matmul_precision", "highest" if full else None)
    torch.backends.cudnn.allow_tf32 = not full
    torch.backends.cuda.matmul.allow_tf32 = not full


def measure(name: str) -> dict[str, float]:
    kind = models.get_spec(name).recipe.loss
    torch_model, jax_model = make_pair(name)
    x, y = random_batch(name, 64, seed=5)
    with torch.no_grad():
        t_out = to_numpy(torch_model(torch_input(x)))
    j_out = np.asarray(jax_model(as_jax(x)))
    _, t_grads = torch_grads(torch_model, x, y, kind)
    _, j_grads = jax_grads(jax_model, x, y, kind)
    grad_rel = max(
        float(np.abs(j_grads[k] - g).max() / np.abs(g).max()) for k, g in t_grads.items()
    )
    return {"logits_max_abs": float(np.abs(j_out - t_out).max()), "grad_max_rel": grad_rel}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.json:  # checked first: the report takes a while to compute
        report.ensure_dir(Path(args.json).absolute().parent, "--json folder")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    results = {
        "device": device or platform.machine(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "torch": torch.__version__,
        "models": {},
    }
    print(
        f"# {results['device']}: jax {jax.__version__} ({jax.default_backend()}), "
        f"torch {torch.__version__} ({TORCH_DEVICE})"
    )
    print(
        "| model | logits max abs (full fp32) | grad max rel (full fp32) "
        "| logits max abs (defaults) | grad max rel (defaults) |"
    )
    print("|---|---|---|---|---|")
    for name in models.MODELS:
        row = {}
        for full in (True, False):
            set_precision(full)
            row["full" if full else "default"] = measure(name)
        results["models"][name] = row
        f, d = row["full"], row["default"]
        print(
            f"| `{name}` | {f['logits_max_abs']:.1e} | {f['grad_max_rel']:.1e} "
            f"| {d['logits_max_abs']:.1e} | {d['grad_max_rel']:.1e} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    run_main(main)
