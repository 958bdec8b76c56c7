"""The one error the command line adds to `PlanError`: the user asked for something it cannot do."""

from __future__ import annotations


class UsageError(Exception):
    """Bad arguments, a model that cannot be found, a file that cannot be read: exit code 2."""
