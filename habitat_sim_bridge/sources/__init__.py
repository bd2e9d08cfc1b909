"""Frame sources: habitat-sim (when installed), a CPU mesh renderer, and recorded-frame replay."""

from habitat_sim_bridge.sources.base import CameraIntrinsics, Frame, FrameSource, ObjectInfo

__all__ = ["CameraIntrinsics", "Frame", "FrameSource", "ObjectInfo"]
