"""Habitat episodes -> ROS 2 camera topics and InternVL finetuning data.

Episodes are read in the habitat-lab formats without habitat-lab (:mod:`.episodes`); frames come from one of the
sources in :mod:`.sources` (habitat-sim when installed, a CPU mesh renderer, or recorded frames); the same frames
feed the ROS bridge node (:mod:`.node`) and the dataset recorder (:mod:`.recorder`).
"""

from habitat_sim_bridge.errors import BridgeError, EpisodeFormatError

__all__ = ["BridgeError", "EpisodeFormatError"]
