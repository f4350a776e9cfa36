"""Several compiled models in one firmware: distinct prefixes, one shared arena.

Models in a bundle never run at the same time (one `<prefix>_run` call returns before the next
starts), so their activation arenas can be the same memory: the bundle defines one
`int8_t <name>_arena[]`, 4-byte aligned and sized to the largest model's arena, and every model is
re-rendered with `render(..., arena_symbol="<name>_arena")`. Weights stay per model (distinct
`<prefix>_` symbols); the kernel library is shared (one copy of kernels/).

Output directory:
    <prefix>_model.h/.c, <prefix>_weights.h/.c   for every model
    <name>_bundle.h/.c                           the shared arena and a table of the models
    kernels/                                     one copy of the kernel library
    models/<prefix>/                             each model's qgen_graph.json/.npz and verify samples
    <name>_bundle.json                           what was bundled (prefixes, sizes)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .emit.c import check_prefix, render, template_environment
from .errors import UserError
from .output import banner_lines, option_text, write_atomic


@dataclass
class BundledModel:
    prefix: str
    source: str
    input_size: int
    output_size: int
    arena_size: int
    graph: object  # the quantised Graph


@dataclass
class BundleResult:
    name: str
    models: list[BundledModel]
    arena_size: int
    files: dict[str, str | bytes] = field(default_factory=dict)
    out_dir: Path | None = None


def _load(item):
    """A CompileResult, or a qgen output directory (or its qgen_graph.json) -> CompileResult."""
    from .api import CompileResult, load_compiled

    if isinstance(item, CompileResult):
        return item
    path = Path(item)
    if path.is_file() and path.name.endswith(".json"):
        path = path.parent
    if not path.exists():
        raise UserError(f"'{item}' does not exist; give qgen output directories (or their qgen_graph.json)")
    return load_compiled(path)


def bundle(results_or_dirs: list, out_dir: str | Path | None = None, name: str = "bundle",
           command: str | None = None) -> BundleResult:
    """Bundle compiled models (CompileResults or output directories) into one set of C files.

    Raises UserError if no model is given or two share a prefix (their symbols would clash).
    """
    check_prefix(name)
    compiled = [_load(item) for item in results_or_dirs]
    if len(compiled) < 1:
        raise UserError("give at least one compiled model to bundle")
    prefixes = [c.prefix for c in compiled]
    for c in compiled:
        if c.streams:
            raise UserError(f"model '{c.prefix}' was compiled with --stream (<prefix>_step / _reset, state between "
                            "calls); a bundle runs whole-window models through <prefix>_run. Bundle it without --stream")
        if c.graph.tensors[c.graph.inputs[0]].dtype != "int8":
            raise UserError(f"model '{c.prefix}' takes int16 input (--precision input=int16); a bundle runs models "
                            "through one int8 entry point. Recompile it with an int8 input")
    for p in prefixes:
        if prefixes.count(p) > 1:
            raise UserError(f"two models have the prefix '{p}'; their C symbols would clash. Recompile one with "
                            "another --prefix")
        if p == name:
            raise UserError(f"model prefix '{p}' equals the bundle name; its {p.upper()}_* macros would clash "
                            "with the bundle's. Choose another bundle name")
        if p.startswith(f"{name}_") or name.startswith(f"{p}_"):
            raise UserError(f"model prefix '{p}' and bundle name '{name}' overlap (one starts with the other + "
                            "'_'); their symbols could clash. Choose another bundle name")
    arena_symbol = f"{name}_arena"
    options = option_text(name=name, models=[c.prefix for c in compiled])
    files: dict[str, str | bytes] = {}
    models: list[BundledModel] = []
    for c in compiled:
        g = c.graph
        rendered = render(g, c.prefix, banner_lines(g.source, options, command), arena_symbol=arena_symbol)
        for rel, content in rendered.items():
            if rel.startswith("kernels/") and rel in files and files[rel] != content:
                raise UserError(f"models disagree on kernel file {rel}")  # impossible with one qgen version
            files[rel] = content
        for rel in ("qgen_graph.json", "qgen_graph.npz", "qgen_verify_inputs.npy"):
            if rel in c.files:
                files[f"models/{c.prefix}/{rel}"] = c.files[rel]
        models.append(BundledModel(c.prefix, g.source, g.tensors[g.inputs[0]].size,
                                   sum(g.tensors[o].size for o in g.outputs), g.arena_size, g))
    arena = max(m.arena_size for m in models)
    result = BundleResult(name, models, arena)
    banner = banner_lines(", ".join(x.source for x in models), options, command)
    m = {"prefix": name, "PREFIX": name.upper(), "banner": banner,
         "arena": arena, "models": [{"prefix": x.prefix, "PREFIX": x.prefix.upper(), "source": x.source,
                                     "arena": x.arena_size} for x in models]}
    env = template_environment()
    files[f"{name}_bundle.h"] = env.get_template("c/bundle.h.j2").render(m=m)
    files[f"{name}_bundle.c"] = env.get_template("c/bundle.c.j2").render(m=m)
    files[f"{name}_bundle.json"] = json.dumps(
        {"name": name, "arena_bytes": arena, "models": [{"prefix": x.prefix, "source": x.source, "input_size": x.input_size,
                                                         "output_size": x.output_size, "arena_bytes": x.arena_size}
                                                        for x in models]}, indent=2) + "\n"
    result.files = files
    if out_dir is not None:
        write_atomic(files, Path(out_dir))
        result.out_dir = Path(out_dir)
    return result


def bundle_sources(out_dir: str | Path) -> list[Path]:
    """The C files to compile for a written bundle (models, bundle, kernels)."""
    out_dir = Path(out_dir)
    return sorted(out_dir.glob("*.c")) + sorted((out_dir / "kernels").glob("*.c"))
