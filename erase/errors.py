"""The one exception type users see: a one-line message naming the file and field at fault."""


class EraseError(Exception):
    """A user-facing error. The CLI prints `erase: <message>` on one line and exits 2.

    Raise it for bad input (config, data, checkpoint, suite) with a message that names the file
    and the field, and says what was expected. Everything else is a bug and keeps its traceback.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
