"""User-facing errors.

Anything a user can cause (a bad path, a bad option, a corrupt image) raises :class:`IvlError` with a
message that names the offending file/key/value and what was expected. Front ends (CLI, ROS node)
print the message without a traceback.
"""

from __future__ import annotations


class IvlError(Exception):
    """An error caused by user input (files, options, data), reported without a traceback."""


class CheckpointError(IvlError):
    """A checkpoint directory is missing, partial or does not match its config."""


class ImageError(IvlError):
    """An image file or array cannot be used as model input."""


class OptionError(IvlError):
    """An option is out of range or of the wrong kind."""
