"""The one exception type users see: its message is a sentence that says what to fix."""


class GPT2Error(Exception):
    """An error caused by the user's input (a path, a checkpoint, an option), not a bug.

    The command line prints its message as one line and exits non-zero, without a traceback.
    """
