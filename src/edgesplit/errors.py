"""User-facing errors.

Every error a user can cause (a bad name, a bad file, a bad shape) is raised as
:class:`EdgesplitError` with a one-line message that says what is wrong and what
to do. The CLI prints it without a traceback (unless ``--debug``) and exits 2.
"""


class EdgesplitError(Exception):
    """A problem the user can fix; ``str(err)`` is the one-line message."""
