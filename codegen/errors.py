"""The two kinds of failure qgen distinguishes (see STYLE.md, Errors)."""


class UserError(Exception):
    """A problem with the user's input: printed without traceback, exit code 1."""
