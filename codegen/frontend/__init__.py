"""Front ends: turn a user's model into qgen IR (float). `load_model` resolves what the user named."""
from .torch_export import from_exported_program, from_module, load_model

__all__ = ["from_exported_program", "from_module", "load_model"]
