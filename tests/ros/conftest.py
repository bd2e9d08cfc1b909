"""Fixtures for the ROS tests: every test talks to real processes over DDS on its own domain."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("ivl_interfaces.srv", reason="build it: scripts/build_interfaces.sh .venv")

PROCS = Path(__file__).parent / "procs"
REPO = Path(__file__).resolve().parents[2]
_domains = itertools.count()


def ros_env(domain: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               FASTDDS_BUILTIN_TRANSPORTS="LARGE_DATA", PYTHONUNBUFFERED="1",
               # Several processes share 2 cores here: torch's spinning OpenMP threads would slow the tiny
               # model 10x under that contention.
               OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.pop("ROS_LOCALHOST_ONLY", None)
    return env


@pytest.fixture(scope="module")
def domain() -> int:
    # Spread over 1..100 by pid so parallel runs of other test suites on this machine rarely collide.
    return 1 + (os.getpid() * 7 + next(_domains)) % 100


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_checkpoint) -> Path:
    """The session's tiny checkpoint (tests/conftest.py); the node reports its directory name as model_id."""
    return tiny_checkpoint


class Proc:
    """A child process whose combined output goes to a log file (read it with .log())."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, **kwargs) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.popen = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
                                      **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
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
        self.popen = subprocess.Popen([sys.executable, str(PROCS / "client.py")], env=env, cwd=REPO, text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr)
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


def start_camera(domain: int, tmp_path: Path, **kwargs) -> subprocess.Popen:
    args = [sys.executable, str(PROCS / "camera.py")]
    for key, value in kwargs.items():
        args += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    return subprocess.Popen(args, env=ros_env(domain), cwd=REPO, text=True, stdout=subprocess.PIPE,
                            stderr=open(tmp_path / "camera.log", "w"))


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
