"""conv_transpose2d, resize: ops that make an image larger (1-D as H=1), channels last."""
from __future__ import annotations

SPECS: list = []
