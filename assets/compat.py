"""Schema compatibility of a candidate version with the version in production.

A candidate may replace production only if every client request that production accepts is one
the candidate accepts, and every output clients read is still there: the same input names, each
with the same datatype and a compatible shape (same rank; each dimension equal, or dynamic on
either side), and every production output name present with the same datatype.
"""

from __future__ import annotations

from registry import Signature, TensorSpec


def _shape_compatible(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))


def _tensor_differences(kind: str, prod: TensorSpec, cand: TensorSpec) -> list[str]:
    out: list[str] = []
    if prod.datatype != cand.datatype:
        out.append(f"{kind} '{prod.name}': datatype {cand.datatype}, production {prod.datatype}")
    if kind == "input" and not _shape_compatible(prod.shape, cand.shape):
        out.append(
            f"input '{prod.name}': shape {list(cand.shape)}, production {list(prod.shape)}"
        )
    return out


def schema_differences(production: Signature, candidate: Signature) -> list[str]:
    """Every way ``candidate`` breaks clients of ``production`` (empty: compatible)."""
    diffs: list[str] = []
    prod_inputs = {t.name: t for t in production.inputs}
    cand_inputs = {t.name: t for t in candidate.inputs}
    for name in sorted(prod_inputs.keys() - cand_inputs.keys()):
        diffs.append(f"input '{name}' is missing (production has it)")
    for name in sorted(cand_inputs.keys() - prod_inputs.keys()):
        diffs.append(f"input '{name}' is new (production has no such input)")
    for name in sorted(prod_inputs.keys() & cand_inputs.keys()):
        diffs += _tensor_differences("input", prod_inputs[name], cand_inputs[name])
    cand_outputs = {t.name: t for t in candidate.outputs}
    for out in production.outputs:
        if out.name not in cand_outputs:
            diffs.append(f"output '{out.name}' is missing (production has it)")
        else:
            diffs += _tensor_differences("output", out, cand_outputs[out.name])
    return diffs
