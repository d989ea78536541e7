"""Mistakes of the user's, as opposed to bugs: the only errors ``hotplug`` turns into one line and exit 2.

Anything else that escapes a command is a bug and keeps its traceback. Each class also derives from the
built-in error it refines (ValueError, FileNotFoundError, RuntimeError), so code that caught those still does.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (an option, a file, the environment); its text is the whole message."""


class UsageError(UserError, ValueError):
    """An option's value is wrong, or options do not go together."""


class InputError(UserError, ValueError):
    """A file or setting the user gave has the wrong content (a trace, an environment variable, a URL)."""


class NotFound(UserError, FileNotFoundError):
    """A file, event log or tool the command needs is not there."""


class MissingDependency(UserError, RuntimeError):
    """An optional extra (libvirt-python, matplotlib) is not installed; the text says how to get it."""
