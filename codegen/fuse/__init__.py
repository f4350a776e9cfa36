"""Model fusion: several trained networks become one.

- `merge` (codegen/fuse/merge.py): weight-space merging of models of one architecture, W = sum_i C_i * W_i
  (uniform average, greedy soup, permutation alignment + BatchNorm re-estimation for independently trained
  models, coefficient search on held-out data). The result is an ordinary nn.Module for the normal pipeline.
- `ensemble` (codegen/fuse/ensemble.py): an ensemble of models as ONE graph sharing the input (identical
  leading layers computed once), outputs combined in the integer domain (mean / concat / vote).
"""

__all__ = ["merge", "ensemble"]


def __getattr__(name: str):
    # imported on first use: `import codegen.fuse` stays free of torch until a function is called
    # the function replaces the submodule of the same name that the import binds on this package
    if name == "merge":
        from .merge import merge

        globals()["merge"] = merge
        return merge
    if name == "ensemble":
        from .ensemble import ensemble

        globals()["ensemble"] = ensemble
        return ensemble
    raise AttributeError(f"module 'codegen.fuse' has no attribute {name!r}")
