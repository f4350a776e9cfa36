"""qgen: compile PyTorch models to bit-exact fixed-point integer C for microcontrollers."""
__version__ = "0.1.0"

from .api import CompileResult, compile  # noqa: E402

__all__ = ["compile", "CompileResult", "__version__"]
