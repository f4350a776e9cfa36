"""The pass pipeline: a named list of passes, the IR verified after each one."""
from __future__ import annotations

from typing import Callable

from .. import progress
from ..ir import Graph, VerifyError, verify


def run_pipeline(graph: Graph, passes: list[tuple[str, Callable[[Graph], Graph]]], quantized_after: str = "quantize") -> Graph:
    done: list[str] = []
    quantized = False
    with progress.task("passes", total=len(passes)) as bar:  # silent unless the CLI / caller enabled progress
        for name, fn in passes:
            bar.update(f"pass {name}")
            graph = fn(graph)
            quantized = quantized or name == quantized_after
            try:
                verify(graph, quantized=quantized)
            except VerifyError as exc:
                raise VerifyError(f"IR invalid after pass '{name}' (passes run: {', '.join(done + [name])}): "
                                  f"{exc}") from None
            done.append(name)
            bar.advance()
    return graph
