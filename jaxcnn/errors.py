"""The one exception type for mistakes a user can make.

Scripts catch :class:`UserError` and print its message as a single line without a
traceback; anything else escaping is a bug in jaxcnn and keeps its traceback.
"""


class UserError(Exception):
    """A bad name, file, shape or checkpoint: the message says what was expected."""
