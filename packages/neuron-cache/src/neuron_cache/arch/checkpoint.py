"""How a `CHECKPOINT` entry names its checkpoint tensors: the one reading export and training share.

An entry maps our parameter (`layers.{i}.…`) to source name templates. The sources are concatenated on dim 0
(fused q/k/v, gate/up); a source holding `{j}` is read once per expert, each expert's sources concatenated, and
the experts stacked on a new dim 0.
"""

from __future__ import annotations


def per_expert(sources: tuple[str, ...]) -> bool:
    """Whether the entry stacks experts (a source holds `{j}`)."""
    return any("{j}" in s for s in sources)


def source_groups(sources: tuple[str, ...], num_experts: int, layer: str | int | None = None) -> list[list[str]]:
    """The checkpoint tensor names of one parameter of layer `layer`: one group per expert when the entry stacks
    experts, else a single group; each group's tensors are concatenated on dim 0."""
    experts = range(num_experts) if per_expert(sources) else [None]
    return [[s.format(i=layer, j=j) for s in sources] for j in experts]
