"""ros2 launch ivl_ros captioner.launch.py [model_path:=DIR] [backend:=torch] [camera_topic:=/cam/image_raw]
[use_sim:=true] [params_file:=FILE] [any_node_parameter:=value ...]

The node list, the params YAML and the meaning of every argument come from ivl_ros.node.launch_spec, which
the pip-only launcher (`ivl-ros-launch captioner ...`) reads too, so both start the same thing. Each node picks its
own DDS transport for images (ivl_ros.transport), so nothing here changes the environment.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch_ros.actions import Node

from ivl_ros.node import launch_spec
from launch import LaunchDescription


def _nodes(context):
    # Evaluated at launch time so that node parameters given as launch arguments (caption_rate_hz:=2.0)
    # override the YAML only when they are given.
    launches = launch_spec.plan(dict(context.launch_configurations), strict=False)
    return [
        Node(
            package=launch_spec.PACKAGE,
            executable=launch.spec.executable,
            name=launch.spec.name,
            output="screen",
            emulate_tty=True,
            parameters=[str(launch.params_file)] + ([launch.overrides] if launch.overrides else []),
        )
        for launch in launches
    ]


def generate_launch_description():
    arguments = [
        DeclareLaunchArgument(name, default_value=default, description=description)
        for name, (default, description) in launch_spec.LAUNCH_ARGUMENTS.items()
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_nodes)])
