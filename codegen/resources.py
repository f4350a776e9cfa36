"""Find the data directories (templates/, firmware/, boards/) in a checkout or an installed wheel."""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the directory `name` ('templates', 'firmware' or 'boards').

    In a source checkout (or editable install) it sits beside the package; in a wheel it is shipped
    as the sub-package `codegen/<name>`.
    """
    for candidate in (_HERE.parent / name, _HERE / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"qgen data directory '{name}' not found next to {_HERE}; reinstall qgen")


def kernel_dir() -> Path:
    return data_dir("firmware") / "kernels"
