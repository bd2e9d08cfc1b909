"""Fixtures for the ROS tests: every test talks to real processes over DDS on its own domain."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from tests.ros_env import REPO, allocate_domain, default_ros_env

pytest.importorskip("rclpy")
pytest.importorskip("ivl_interfaces.srv", reason="build it: scripts/build_interfaces.sh .venv")

PROCS = Path(__file__).parent / "procs"


def ros_env(domain: int) -> dict[str, str]:
    """Every process of these tests, node included, runs with default ROS 2 settings on its own domain."""
    return default_ros_env(domain)


@pytest.fixture(scope="module")
def domain() -> int:
    return allocate_domain()


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_checkpoint) -> Path:
    """The session's tiny checkpoint (tests/conftest.py); the node reports its directory name as model_id."""
    return tiny_checkpoint


class Proc:
    """A child process whose combined output goes to a log file (read it with .log())."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, cwd: Path = REPO, **kwargs) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.popen = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 90.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.log():
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not in the log of {self.popen.args[:3]} within {timeout} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


def node_args(**params) -> list[str]:
    args = [sys.executable, "-m", "ivl_ros.node.captioner", "--ros-args"]
    for key, value in params.items():
        args += ["-p", f"{key}:={json.dumps(value) if isinstance(value, (list, bool)) else value}"]
    return args


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def start_node(domain, logs):
    """Nodes live for the whole test module: a node start (torch import, model load) costs seconds."""
    procs: list[Proc] = []

    def start(**params) -> Proc:
        proc = Proc(node_args(**params), ros_env(domain), logs / f"node{len(procs)}.log")
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


class RpcClient:
    """Drives procs/client.py: call(op, **kwargs) -> result (raises on an error reply)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self._stderr = open(log_path, "w")
        self.popen = subprocess.Popen(
            [sys.executable, str(PROCS / "client.py")],
            env=env,
            cwd=REPO,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        assert json.loads(self.popen.stdout.readline())["ok"]

    def call(self, op: str, **kwargs):
        self.popen.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.popen.stdin.flush()
        line = self.popen.stdout.readline()
        if not line:
            raise AssertionError(f"client process died (rc {self.popen.poll()})")
        reply = json.loads(line)
        if not reply["ok"]:
            raise AssertionError(f"client op {op} failed: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.stdin.write('{"op": "quit"}\n')
                self.popen.stdin.flush()
                self.popen.wait(10)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.popen.kill()
        self._stderr.close()


@pytest.fixture(scope="module")
def client(domain, logs):
    rpc = RpcClient(ros_env(domain), logs / "client.log")
    yield rpc
    rpc.close()


def wait_captions(client: RpcClient, done, timeout: float = 180.0) -> list[dict]:
    """Collect captions (clearing the client's list) until ``done(captions)``; the deadline only bounds a broken
    run, a healthy one under load never gets near it."""
    end, got = time.monotonic() + timeout, []
    while not done(got):
        if time.monotonic() > end:
            raise AssertionError(f"captions never satisfied the test within {timeout} s; got {got}")
        got += client.call("captions")
        time.sleep(0.05)
    return got


def publish_until_logged(client: RpcClient, proc: Proc, op: str, message: str, timeout: float = 90.0, **fields):
    """Publish (the client's ``op`` with ``fields``) until ``proc`` logs ``message``.

    For compressed topics, where the test client has no spare rejection to probe the node's reader with (raw
    publishers wait for a counted probe frame: procs/client.py ``_wait_reader_matched``). A best-effort frame sent
    right after discovery can be dropped by the node's reader: our writer matches the reader (and the node's graph
    lists our writer) a moment before the reader has matched our writer, and DDS discards what a reader receives
    from writers it does not know yet (a CI run lost the first two of seven bad raw frames so). The node logs every
    frame it rejects, so publishing again until the line appears is harmless; the short wait between sends is a
    retry interval, the deadline is ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        client.call(op, **fields)
        try:
            proc.wait_log(message, timeout=min(2.0, max(0.1, end - time.monotonic())))
            return
        except AssertionError:
            if time.monotonic() >= end:
                raise


def stub_launch_modules(monkeypatch) -> None:
    """Minimal launch/launch_ros stand-ins (not installable from PyPI) that record what a launch file builds:
    each action keeps its args/kwargs; LaunchDescription is the list of its entities."""

    class Action:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

    mods = {name: types.ModuleType(name) for name in ("launch", "launch.actions", "launch_ros", "launch_ros.actions")}
    mods["launch"].LaunchDescription = lambda entities: list(entities)
    for name in ("DeclareLaunchArgument", "OpaqueFunction"):
        setattr(mods["launch.actions"], name, type(name, (Action,), {}))
    mods["launch_ros.actions"].Node = type("Node", (Action,), {})
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)


def assert_serves_a_default_client(client: RpcClient, question: str, caption_rate_hz: float) -> None:
    """What a user's default-configured process gets from a running captioner: captions of the camera frames, an
    /ivl/ask answer, Describe feedback and a parameter change."""
    captions = wait_captions(client, lambda got: len(got) >= 2)
    assert all(c["camera"] == "/camera/image_raw" and c["text"] for c in captions), captions
    reply = client.call("ask", question=question)
    assert reply["success"] and reply["answer"], reply
    described = client.call("describe", question=question)
    assert described["success"] and described["feedback"], described
    assert client.call("set_params", values={"caption_rate_hz": caption_rate_hz})[0]["successful"]
    assert client.call("get_params", names=["caption_rate_hz"]) == {"caption_rate_hz": caption_rate_hz}


class Camera:
    """procs/camera.py in its own process: a default-configured publisher, as a user's camera driver is."""

    def __init__(self, domain: int, log_dir: Path, **kwargs) -> None:
        args = [sys.executable, str(PROCS / "camera.py")]
        for key, value in kwargs.items():
            if isinstance(value, bool):
                args += [f"--{key}"] if value else []
            else:
                args += [f"--{key}", str(value)]
        self.popen = subprocess.Popen(
            args,
            env=ros_env(domain),
            cwd=REPO,
            text=True,
            stdout=subprocess.PIPE,
            stderr=open(log_dir / "camera.log", "w"),
        )

    def wait_matched(self) -> None:
        """Block until the camera's publisher has matched a subscriber (it publishes nothing before; it gives up
        after its own generous deadline)."""
        line = self.popen.stdout.readline()
        assert line and json.loads(line)["matched"] >= 1, f"camera found no subscriber: {line!r}"

    def finish(self, timeout: float = 120.0) -> dict:
        """Wait for a --count run to end (or stop an endless one with SIGINT) -> {"published", "stamps"}."""
        try:
            out, _ = self.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.send_signal(signal.SIGINT)
            out, _ = self.popen.communicate(timeout=30)
        lines = out.strip().splitlines()
        assert lines, f"the camera process ended (rc {self.popen.returncode}) without its summary: see camera.log"
        return json.loads(lines[-1])

    def stop(self) -> dict:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
        return self.finish()


def start_camera(domain: int, log_dir: Path, **kwargs) -> Camera:
    return Camera(domain, log_dir, **kwargs)


class SingleThreadEngine:
    """The same model in the test process, to check the node's answers against ``engine.ask``.

    Runs with one torch thread like the node processes (OMP_NUM_THREADS=1), so float reductions match,
    and restores the thread count so other test folders keep their speed.
    """

    def __init__(self, engine) -> None:
        self._engine = engine

    def __getattr__(self, name):
        import torch

        method = getattr(self._engine, name)

        def call(*args, **kwargs):
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return method(*args, **kwargs)
            finally:
                torch.set_num_threads(before)

        return call


@pytest.fixture(scope="session")
def engine(tiny_engine):
    return SingleThreadEngine(tiny_engine)
