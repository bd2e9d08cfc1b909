"""``ivl-ros-launch captioner [name:=value ...]``: ros2 launch for pip-only ROS 2 (no launch/launch_ros there).

Starts the nodes of :mod:`launch_spec` as child processes with ``--ros-args --params-file`` (the same YAML as
``captioner.launch.py``), forwards SIGINT/SIGTERM once, and exits non-zero if a child dies on its own. The children
get the launcher's environment unchanged: each node picks its own DDS transport (:mod:`ivl_ros.transport`).
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ivl_ros.node import launch_spec
from ivl_ros.node.params import PARAMS

LAUNCHES = ("captioner",)
STOP_TIMEOUT_S = 10.0
PREFIX = "[ivl-ros-launch]"


def parse_arguments(items: list[str]) -> dict[str, str]:
    args = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise launch_spec.LaunchError(f"argument {item!r} is not name:=value")
        args[name] = value
    return args


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the launcher dies (even by SIGKILL), so no node is left orphaned."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def command(launch: launch_spec.NodeLaunch, overrides_file: Path | None) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        launch.spec.module,
        "--ros-args",
        "-r",
        f"__node:={launch.spec.name}",
        "--params-file",
        str(launch.params_file),
    ]
    if overrides_file is not None:
        cmd += ["--params-file", str(overrides_file)]
    return cmd


def supervise(children: dict[str, subprocess.Popen], stop_requested: list[int]) -> int:
    """Wait until a signal arrives or a child exits; then stop the rest. -> the launcher's exit code."""
    failed = None
    while not stop_requested and failed is None:
        for name, child in children.items():
            code = child.poll()
            if code is not None:
                failed = name
                print(f"{PREFIX} {name} exited with code {code}; stopping the others", file=sys.stderr, flush=True)
                break
        else:
            time.sleep(0.1)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGINT)  # the nodes treat SIGINT as a clean shutdown
    end = time.monotonic() + STOP_TIMEOUT_S
    for name, child in children.items():
        try:
            child.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{PREFIX} {name} did not stop within {STOP_TIMEOUT_S:.0f} s; killing it", file=sys.stderr)
            child.kill()
            child.wait()
    if failed is not None:
        return children[failed].returncode or 1
    # Exit codes of children stopped by our SIGINT: 0, or -SIGINT if they died of it before rclpy was up.
    bad = {n: c.returncode for n, c in children.items() if c.returncode not in (0, -signal.SIGINT)}
    for name, code in bad.items():
        print(f"{PREFIX} {name} exited with code {code}", file=sys.stderr)
    return 1 if bad else 0


def run(launch_name: str, items: list[str], dry_run: bool = False) -> int:
    if launch_name not in LAUNCHES:
        raise launch_spec.LaunchError(f"unknown launch {launch_name!r}; available: {', '.join(LAUNCHES)}")
    launches = launch_spec.plan(parse_arguments(items))
    for launch in launches:
        try:
            found = importlib.util.find_spec(launch.spec.module) is not None
        except ModuleNotFoundError:  # the parent package is missing
            found = False
        if not found:
            raise launch_spec.LaunchError(f"{launch.spec.name}: module {launch.spec.module} is not installed")
    with tempfile.TemporaryDirectory(prefix="ivl-ros-launch-") as tmp:
        commands = {}
        for launch in launches:
            overrides = None
            if launch.overrides:
                overrides = Path(tmp) / f"{launch.spec.name}.overrides.yaml"
                overrides.write_text(launch_spec.overrides_yaml(launch))
            commands[launch.spec.name] = command(launch, overrides)
        if dry_run:
            for launch in launches:
                print(f"{launch.spec.name}: {' '.join(commands[launch.spec.name])}")
                if launch.overrides:
                    print(launch_spec.overrides_yaml(launch).rstrip())
            return 0
        stop_requested: list[int] = []

        def on_signal(signum: int, _frame: object) -> None:
            stop_requested.append(signum)

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        children = {}
        for name, cmd in commands.items():
            # Own process group: a terminal Ctrl-C reaches only the launcher, which forwards it exactly once.
            children[name] = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent)
            print(f"{PREFIX} started {name} (pid {children[name].pid})", flush=True)
        return supervise(children, stop_requested)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ivl-ros-launch",
        description="Start the ivl_ros nodes without ros2 launch (pip-installed ROS 2).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="launch arguments:\n"
        + "\n".join(f"  {k}:=...  {d} (default {v!r})" for k, (v, d) in launch_spec.LAUNCH_ARGUMENTS.items())
        + "\nnode parameters (override the params file):\n"
        + "\n".join(f"  {p.name}:=...  {p.description}" for p in PARAMS)
        + "\nexample: ivl-ros-launch captioner model_path:=DIR image_topics:=\"['/cam/image_raw']\" "
        "caption_rate_hz:=2.0 use_sim:=true",
    )
    parser.add_argument("launch", choices=LAUNCHES, help="what to launch")
    parser.add_argument("arguments", nargs="*", metavar="name:=value")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and overrides, start nothing")
    ns = parser.parse_args(argv)
    try:
        return run(ns.launch, ns.arguments, ns.dry_run)
    except launch_spec.LaunchError as exc:
        print(f"ivl-ros-launch: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
