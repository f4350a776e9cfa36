"""qgen: compile PyTorch models to bit-exact fixed-point integer C for microcontrollers."""
__version__ = "0.1.0"

__all__ = ["compile", "CompileResult", "CompileOptions", "QuantOptions", "CompressOptions", "EmitOptions",
           "LimitOptions", "pipeline", "tune", "__version__"]


def __getattr__(name: str):
    """`codegen.compile` / `codegen.CompileResult`, imported on first use: `import codegen` (and the `qgen`
    command's start-up) stays free of torch and numpy until they are needed, so that the CLI's main can
    catch a Ctrl-C that lands while they load."""
    if name in ("compile", "CompileResult"):
        from . import api

        return getattr(api, name)
    if name in ("CompileOptions", "QuantOptions", "CompressOptions", "EmitOptions", "LimitOptions"):
        from . import options

        return getattr(options, name)
    if name == "pipeline":
        from .driver import pipeline

        return pipeline
    if name == "tune":  # codegen/tuning.py (`qgen tune`): needs the `tune` extra (optuna, dask)
        from .tuning import tune

        return tune
    raise AttributeError(f"module 'codegen' has no attribute {name!r}")
