"""The one ROS 2 environment scheme of every multi-process test (tests/ros, tests/habitat, tests/eval's node test).

Every process a test starts, the nodes under test included, runs with **default** ROS 2 settings, exactly as a user's
camera driver or a `ros2` command would: the variables below that change DDS behaviour are removed, and only
``ROS_DOMAIN_ID`` is set. The nodes pick their own transport (ivl_ros.transport), which is what is being tested.

Isolation comes from the domain id alone: each test module takes a domain that no other pytest process on this
machine holds, by locking ``<tmp>/ivl_ros_test_domains/<id>.lock`` for the life of the pytest process (the lock goes
when the process dies, however it dies).
"""

from __future__ import annotations

import fcntl
import os
import random
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Settings a user's shell does not have; the tests must not depend on them (nor inherit them from the developer).
NON_DEFAULT_VARIABLES = (
    "FASTDDS_BUILTIN_TRANSPORTS",
    "FASTDDS_DEFAULT_PROFILES_FILE",
    "FASTRTPS_DEFAULT_PROFILES_FILE",
    "RMW_FASTRTPS_USE_QOS_FROM_XML",
    "ROS_AUTOMATIC_DISCOVERY_RANGE",
    "ROS_STATIC_PEERS",
    "ROS_LOCALHOST_ONLY",
    "ROS_DISCOVERY_SERVER",
    "ROS_DOMAIN_ID",
    "IVL_ROS_DDS_PROFILE",
    "RMW_IMPLEMENTATION",
)
# ROS_DOMAIN_ID 1..101 maps to well-separated UDP ports on Linux (0 is everybody's default).
DOMAINS = range(1, 102)
_LOCK_DIR = Path(tempfile.gettempdir()) / "ivl_ros_test_domains"
_held: list = []  # open lock files: the domains stay ours while this process lives


def allocate_domain() -> int:
    """A ROS domain id no other test process on this machine is using."""
    _LOCK_DIR.mkdir(exist_ok=True)
    start = random.Random(os.getpid()).randrange(len(DOMAINS))
    for i in range(len(DOMAINS)):
        domain = DOMAINS[(start + i) % len(DOMAINS)]
        lock = open(_LOCK_DIR / f"{domain}.lock", "a")  # held open on purpose: the lock lives with it
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        _held.append(lock)
        return domain
    raise RuntimeError(f"all ROS domain ids {DOMAINS.start}..{DOMAINS.stop - 1} are held by other test processes")


def default_ros_env(domain: int, **extra: str) -> dict[str, str]:
    """The environment of a default-configured ROS 2 process on ``domain`` (plus test-only extras)."""
    env = {k: v for k, v in os.environ.items() if k not in NON_DEFAULT_VARIABLES}
    env.update(
        ROS_DOMAIN_ID=str(domain),
        PYTHONUNBUFFERED="1",
        # Several processes share 2 cores here: torch's spinning OpenMP threads would slow the tiny model
        # 10x under that contention (this is about CPU time, not DDS).
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    env.update(extra)
    return env
