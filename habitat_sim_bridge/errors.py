"""Errors a user can cause (bad dataset files, bad options), reported by message without a traceback."""

from __future__ import annotations

try:  # share the project's user-error base so front ends treat all of them alike
    from ivl_ros.errors import IvlError as _Base
except ImportError:  # the bridge is usable on its own, e.g. on a habitat-sim workstation
    _Base = Exception


class BridgeError(_Base):
    """A user-caused error in the habitat bridge (files, options, missing optional backends)."""


class EpisodeFormatError(BridgeError):
    """An episode dataset file does not follow its habitat-lab schema."""
