"""What `captioner` launches: the node list, the launch arguments and the params file, for both launchers.

``launch/captioner.launch.py`` (ros2 launch, real ROS installs) and ``ivl-ros-launch captioner`` (pip-only
ROS, :mod:`ivl_ros.node.launcher`) both call :func:`plan`, so the two paths start the same nodes with the
same YAML and the same ``name:=value`` arguments. Imports no ROS and no ``launch``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ivl_ros.node.params import PARAM_BY_NAME
from ivl_ros.share import PACKAGE as PACKAGE  # re-exported: the launch file names the package by it
from ivl_ros.share import find_share_file, share_candidates

PARAMS_FILE_NAME = "captioner.yaml"


@dataclass(frozen=True)
class NodeSpec:
    name: str  # ROS node name, also its key in the params YAML
    module: str  # `python -m module` (pip launcher)
    executable: str  # console script in lib/ivl_ros (ros2 launch)
    condition: str | None = None  # a boolean launch argument that must be true


NODES = (
    NodeSpec("ivl_captioner", "ivl_ros.node.captioner", "ivl_captioner"),
    NodeSpec("habitat_bridge", "habitat_sim_bridge.node", "habitat_bridge", condition="use_sim"),
)

# Launch arguments beyond the node parameters: name -> (default, description). An empty default means
# "keep what the params file says".
LAUNCH_ARGUMENTS: dict[str, tuple[str, str]] = {
    "params_file": ("", f"parameters YAML (default: the installed config/{PARAMS_FILE_NAME})"),
    "model_path": ("", "InternVL2 checkpoint directory"),
    "backend": ("", "torch | onnx | trt"),
    "camera_topic": ("", "one camera topic (shorthand for image_topics:=\"['TOPIC']\")"),
    "use_sim": ("false", "also start the Habitat simulator bridge (publishes /camera/image_raw)"),
}


class LaunchError(ValueError):
    """A bad launch argument; the message says which and what is accepted."""


@dataclass
class NodeLaunch:
    spec: NodeSpec
    params_file: Path
    overrides: dict[str, Any] = field(default_factory=dict)


def default_params_file() -> Path:
    """config/captioner.yaml: installed under <prefix>/share/ivl_ros/config, or in a source checkout."""
    relative = f"config/{PARAMS_FILE_NAME}"
    path = find_share_file(relative)
    if path is None:
        searched = [str(c) for c in share_candidates(relative)]
        raise LaunchError(f"{PARAMS_FILE_NAME} not found in {searched}; pass params_file:=FILE")
    return path


def parse_value(name: str, text: str) -> Any:
    """A launch argument's text -> the parameter's type (YAML syntax for lists: "['/a', '/b']")."""
    spec = PARAM_BY_NAME[name]
    default = spec.default
    if isinstance(default, str):
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LaunchError(f"{name}:={text!r} is not valid YAML ({exc})") from None
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:  # list of strings
        value = [value] if isinstance(value, str) else value
        ok = isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)
    if not ok:
        kind = "a list of topic names" if isinstance(default, list) else type(default).__name__
        raise LaunchError(f"{name}:={text!r} must be {kind} (default {default!r})")
    return value


def _truthy(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off", ""):
        return False
    raise LaunchError(f"{name}:={text!r} must be true or false")


def plan(args: Mapping[str, str], strict: bool = True) -> list[NodeLaunch]:
    """The nodes to start for ``name:=value`` launch arguments (``strict``: unknown names are errors)."""
    unknown = [k for k in args if k not in LAUNCH_ARGUMENTS and k not in PARAM_BY_NAME]
    if unknown and strict:
        raise LaunchError(
            f"unknown launch argument(s) {unknown}; known: {sorted(LAUNCH_ARGUMENTS)} and the node "
            f"parameters {sorted(PARAM_BY_NAME)}"
        )
    params_file = Path(args["params_file"]) if args.get("params_file") else default_params_file()
    if not params_file.is_file():
        raise LaunchError(f"params_file {params_file} does not exist")
    overrides: dict[str, Any] = {}
    for name, text in args.items():
        # model_path/backend are declared launch arguments whose empty default means "keep the YAML value".
        if name in PARAM_BY_NAME and not (name in LAUNCH_ARGUMENTS and text == ""):
            overrides[name] = parse_value(name, text)
    if args.get("camera_topic"):
        overrides["image_topics"] = [args["camera_topic"]]
    flags = {name: _truthy(name, args.get(name, LAUNCH_ARGUMENTS[name][0])) for name in ("use_sim",)}
    launches = []
    for spec in NODES:
        if spec.condition and not flags[spec.condition]:
            continue
        launches.append(NodeLaunch(spec, params_file, overrides if spec.name == "ivl_captioner" else {}))
    return launches


def overrides_yaml(launch: NodeLaunch) -> str:
    """A params file holding only the overrides; passed after the base file, whose values it replaces."""
    return yaml.safe_dump({f"/**/{launch.spec.name}": {"ros__parameters": launch.overrides}}, sort_keys=True)
