"""The base of every error meant for the user: the entry points print its one-line message and exit 2.

A bad value, a missing dataset, a busy or mismatched run folder: the user can fix these, and a traceback
would only bury the message. Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """An error whose message is one line telling the user what is wrong and what is allowed."""
