"""The one error type a user sees, printed as a single line without a traceback."""


class UserError(Exception):
    """Bad input or a missing tool: the message names the file/field and what to do.

    The CLI prints ``error: <message>`` and exits with ``exit_code``; anything else
    that escapes is a bug and keeps its traceback.
    """

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
