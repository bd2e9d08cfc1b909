"""ivl_ros: pip-installable and ament_python-compatible (colcon build) package."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "ivl_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="InternVL2-2B vision-language perception for ROS 2: captions and VQA from camera topics",
    # finetune/, export/ and benchmarks/ are packages of the project too, so that `python finetune/lora.py`,
    # `python export/build_engines.py` and the benchmark scripts import them without editing sys.path.
    packages=find_packages(
        include=[
            "ivl_ros",
            "ivl_ros.*",
            "habitat_sim_bridge",
            "habitat_sim_bridge.*",
            "finetune",
            "export",
            "benchmarks",
        ]
    ),
    package_data={"finetune": ["datasets.json"]},
    python_requires=">=3.10",
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        # The node executables where `ros2 run` and launch_ros look (<prefix>/lib/<package>/<executable>). pip
        # ignores setup.cfg's install_scripts, so they are data files here; launch_spec.NODES names the same.
        (f"lib/{PACKAGE}", sorted(glob("scripts/ros/*"))),
    ],
    # Runtime requirements are kept loose for GPU machines (torch 2.11 cu130, transformers 5.17);
    # scripts/setup.sh installs the pinned CPU set. ROS 2 (rclpy) comes from the ROS install or the
    # pip wheels in requirements/ros.txt.
    install_requires=[
        "torch>=2.9,<2.15",
        "transformers>=5.17,<6",
        "sentencepiece>=0.2,<0.3",
        "safetensors>=0.4",
        "pillow>=10",
        "numpy>=1.26,<3",
        "tqdm>=4.66",
    ],
    entry_points={
        "console_scripts": [
            "ivl = ivl_ros.cli:main",
            "ivl-ros-launch = ivl_ros.node.launcher:main",
            "ivl-ros-ask = ivl_ros.node.ask:main",
            "ivl-ros-demo = ivl_ros.node.demo:main",
            # The names `ros2 run` / launch_ros use (installed to lib/ivl_ros by setup.cfg under colcon).
            "ivl_captioner = ivl_ros.node.captioner:main",
            "habitat_bridge = habitat_sim_bridge.node:main",
        ],
    },
    zip_safe=False,
)
