"""transferkit's task-vector merges (task arithmetic, TIES, DARE, DARE-TIES) beside mergekit's on identical
tensors; the result is recorded in bench/results/merge_mergekit.md.

Run with a checkout of https://github.com/arcee-ai/mergekit (not installed: its package pins clash with
ours, so its ``sparsify`` module is imported from the checkout and the source of ``GTATask.execute`` and
``get_mask`` is read and run unchanged on our tensors)::

    MERGEKIT_SRC=/tmp/mergekit .venv/bin/python bench/merge_mergekit.py

DARE's random masks: mergekit draws them from torch's global generator, one ``torch.bernoulli`` per task
vector in order; ours from a generator seeded alike, so the same masks are drawn.
"""

from __future__ import annotations

import ast
import datetime
import os
import sys
import types
import typing
from pathlib import Path

import torch

from transferkit.transfer.merge import MERGE_METHODS

SRC = Path(os.environ.get("MERGEKIT_SRC", "/tmp/mergekit"))


def _mergekit() -> tuple[typing.Any, typing.Any]:
    """mergekit's ``GTATask.execute`` (as a function) and its namespace."""
    sys.path.insert(0, str(SRC))
    from mergekit.sparsify import RescaleNorm, SparsificationMethod, sparsify

    tree = ast.parse((SRC / "mergekit/merge_methods/generalized_task_arithmetic.py").read_text())
    ns: dict[str, typing.Any] = {"torch": torch, "sparsify": sparsify, "RescaleNorm": RescaleNorm,
                                 "SparsificationMethod": SparsificationMethod, "Optional": typing.Optional,
                                 "Literal": typing.Literal, "Dict": dict, "List": list, "Tuple": tuple,
                                 "Any": typing.Any}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "get_mask":
            exec(compile(ast.Module([node], []), "get_mask", "exec"), ns)  # noqa: S102 (mergekit's own source)
        if isinstance(node, ast.ClassDef) and node.name == "GTATask":
            for f in node.body:
                if isinstance(f, ast.FunctionDef) and f.name == "execute":
                    f.decorator_list = []
                    exec(compile(ast.Module([f], []), "execute", "exec"), ns)  # noqa: S102
    return ns["execute"], ns


def main() -> None:
    execute, ns = _mergekit()
    methods = {m.value: m for m in ns["SparsificationMethod"]}

    def theirs(stack, base, weights, *, density, sparsification, consensus, normalize, rescale, lam):
        tvs = [{"delta": stack[i] - base, "weight": float(weights[i]), "density": density}
               for i in range(len(stack))]
        ns["get_task_vectors"] = lambda *a, **k: (tvs, base)
        task = types.SimpleNamespace(
            weight_info=None, base_model=None, tensor_parameters=types.SimpleNamespace(data=None),
            method=types.SimpleNamespace(sparsification_method=methods.get(sparsification),
                                         consensus_method=consensus),
            rescale_norm=ns["RescaleNorm"].l1 if rescale == "l1" else None, int8_mask=False,
            normalize=normalize, lambda_=lam)
        return execute(task, {})

    torch.manual_seed(0)
    base = torch.randn(64, 33)
    stack = base + 0.1 * torch.randn(3, 64, 33)
    weights = torch.tensor([1.0, 0.7, 0.4], dtype=torch.float64)
    cases = [
        ("task_arithmetic", {"scale": 0.6},
         dict(density=1.0, sparsification=None, consensus=None, normalize=False, rescale=None, lam=0.6)),
        ("ties", {"density": 0.2}, dict(density=0.2, sparsification="magnitude", consensus="sum",
                                        normalize=True, rescale=None, lam=1.0)),
        ("ties", {"density": 0.5, "scale": 0.8, "consensus": "count"},
         dict(density=0.5, sparsification="magnitude", consensus="count", normalize=True, rescale=None,
              lam=0.8)),
    ]
    for name, consensus in (("dare", None), ("dare_ties", "sum")):
        for rescale in ("l1", None):
            cases.append((name, {"density": 0.3, "rescale": rescale},
                          dict(density=0.3, sparsification="random", consensus=consensus, normalize=False,
                               rescale=rescale, lam=1.0)))
    lines = ["## transferkit's task-vector merges beside mergekit's", "",
             f"Command: `MERGEKIT_SRC=... .venv/bin/python bench/merge_mergekit.py`; {os.cpu_count()} cores; "
             f"{datetime.date.today()}; mergekit checkout "
             f"{os.environ.get('MERGEKIT_COMMIT', '(commit not given)')}; 3 task vectors of a 64 x 33 tensor "
             "(base N(0, 1), deltas N(0, 0.01)), weights 1, 0.7, 0.4.", "",
             "| method | options | max abs difference |", "|---|---|---|"]
    for name, ours_opts, mk in cases:
        spec = MERGE_METHODS.get(name)
        opts = {**spec.options, **ours_opts}
        if "seed" in opts:
            torch.manual_seed(7)
            opts["generator"] = torch.Generator().manual_seed(7)
        ours = spec.combine(stack, base, weights, **opts)
        torch.manual_seed(7)
        diff = float((ours - theirs(stack, base, weights.float(), **mk)).abs().max())
        lines.append(f"| {name} | {ours_opts} | {diff:.1e} |")
    text = "\n".join(lines) + "\n"
    (Path(__file__).parent / "results" / "merge_mergekit.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
