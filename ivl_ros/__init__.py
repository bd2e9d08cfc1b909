"""ivl_ros: InternVL2 vision-language perception for ROS 2.

The model core lives in :mod:`ivl_ros.model` and imports no ROS; the ROS adapters live in
:mod:`ivl_ros.node`.
"""

__version__ = "0.1.0"
