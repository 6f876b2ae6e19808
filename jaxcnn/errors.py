"""The one exception type for mistakes a user can make.

Scripts catch :class:`UserError` and print its message as a single line without a
traceback; anything else escaping is a bug in jaxcnn and keeps its traceback.
"""


class UserError(Exception):
    """A bad name, file, shape or checkpoint: the message says what was expected."""


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first line of ``err``'s message (at most ``limit`` characters), or its type's
    name when the message is empty: what a one-sentence error quotes of a library's
    many-line exception."""
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:limit]
