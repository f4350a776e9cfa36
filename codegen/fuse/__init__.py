"""Model fusion: several trained networks become one.

- `merge` (codegen/fuse/weight_merge.py): weight-space merging of models of one architecture, W = sum_i C_i * W_i
  (uniform average, greedy soup, permutation alignment + BatchNorm re-estimation for independently trained
  models, coefficient search on held-out data). The result is an ordinary nn.Module for the normal pipeline.
- `ensemble` (codegen/fuse/ensemble_graph.py): an ensemble of models as ONE graph sharing the input (identical
  leading layers computed once), outputs combined in the integer domain (mean / concat / vote).

The implementation modules are named differently from the functions on purpose: importing a submodule binds it
as an attribute of this package, which would shadow a function of the same name (`codegen.fuse.merge` would
become the module once anything imported `codegen.fuse.merge`).
"""

__all__ = ["merge", "ensemble"]

_LAZY = {"merge": "weight_merge", "ensemble": "ensemble_graph"}


def __getattr__(name: str):
    # imported on first use: `import codegen.fuse` stays free of torch until a function is called;
    # cached in the package globals so __getattr__ runs once per name
    if name in _LAZY:
        import importlib

        func = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = func
        return func
    raise AttributeError(f"module 'codegen.fuse' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
