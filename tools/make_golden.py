"""Write the golden results of torch.optim.Adam/AdamW for the optimiser tests.

    .venv/bin/python tools/make_golden.py        (needs torch: pip install torch)

For every case of ``tools/golden_cases.py`` it runs torch's own optimiser on the
case's inputs and stores the state after each checkpoint step in one ``.npz`` file.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from golden_cases import CASES, CHECKPOINT_STEPS, GOLDEN_FILE, STEPS, case_inputs


def torch_optimizer(param: torch.Tensor, options: dict[str, Any]) -> torch.optim.Optimizer:
    """torch's Adam, or AdamW for decoupled weight decay, single-tensor (as on CPU)."""
    options = dict(options)
    decoupled = options.pop("decoupled_weight_decay", False)
    kind = torch.optim.AdamW if decoupled else torch.optim.Adam
    options.setdefault("weight_decay", 0.0)
    return kind([param], foreach=False, **options)


def run_case(case: str) -> dict[str, np.ndarray]:
    """The torch state of one case at every checkpoint step."""
    _, options = CASES[case]
    params, gradients = case_inputs(case)
    param = torch.nn.Parameter(torch.from_numpy(params.copy()))
    optimizer = torch_optimizer(param, options)
    results: dict[str, np.ndarray] = {}
    for step in range(1, STEPS + 1):
        param.grad = torch.from_numpy(gradients[step - 1].copy())
        optimizer.step()
        if step in CHECKPOINT_STEPS:
            state = optimizer.state[param]
            results[f"{case}/{step}/params"] = param.detach().numpy().copy()
            results[f"{case}/{step}/exp_avg"] = state["exp_avg"].numpy().copy()
            results[f"{case}/{step}/exp_avg_sq"] = state["exp_avg_sq"].numpy().copy()
            if "max_exp_avg_sq" in state:
                results[f"{case}/{step}/max_exp_avg_sq"] = state["max_exp_avg_sq"].numpy().copy()
    return results


def main() -> None:
    """Run every case and write the golden file."""
    results: dict[str, np.ndarray] = {}
    for case in sorted(CASES):
        results.update(run_case(case))
    about = {"torch": torch.__version__, "steps": STEPS, "cases": sorted(CASES)}
    results["about"] = np.frombuffer(json.dumps(about).encode(), dtype=np.uint8)
    path = GOLDEN_FILE
    np.savez_compressed(path, **results)  # type: ignore[arg-type]
    print(f"wrote {len(CASES)} cases, {len(results) - 1} arrays to {path}")


if __name__ == "__main__":
    main()
