"""matmul of two activations and the layout ops it needs (attention blocks)."""
from __future__ import annotations

SPECS: list = []
