"""How ivl_ros processes configure Fast DDS for camera images, each for itself, before its participant exists.

The rule (measured: benchmarks/results/node_delivery.md):

* Nothing here may cut a process off from default-configured participants (a camera driver, ``ros2 topic echo``,
  rviz). ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA`` does exactly that (a LARGE_DATA participant and a default one never
  discover each other), so it is never used. Both shipped profiles keep Fast DDS's default UDP discovery.
* A process that *receives* images (the captioner) uses UDPv4 only, with 4 MB socket buffers
  (``config/fastdds_image_subscriber.xml``). A default-configured publisher then sends it UDP, which the large
  receive buffer holds, instead of shared memory, where the publisher's own ~512 KB default segment cannot hold a
  640x480 frame and nearly every best-effort frame is lost.
* A process that *sends* images (the Habitat bridge) uses a 32 MB shared-memory segment plus UDP
  (``config/fastdds_image_publisher.xml``): a shared-memory sender writes into its own segment, so default
  subscribers on the machine get whole frames.
* With ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` fragmented UDP samples are lost in Fast DDS 3.2 (the kernel counts
  them as datagrams to closed ports), so receivers use the shared-memory profile there too.
* An explicit user choice (``FASTDDS_BUILTIN_TRANSPORTS``, ``FASTDDS_DEFAULT_PROFILES_FILE`` or the older
  ``FASTRTPS_DEFAULT_PROFILES_FILE``), another RMW, or ``IVL_ROS_DDS_PROFILE=off`` is left alone.

Imports no ROS: called at the top of a node's ``main()``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from ivl_ros.share import find_share_file

SUBSCRIBER = "subscriber"
PUBLISHER = "publisher"
PROFILE_FILES = {SUBSCRIBER: "config/fastdds_image_subscriber.xml", PUBLISHER: "config/fastdds_image_publisher.xml"}
USER_CHOICE_VARIABLES = (
    "FASTDDS_BUILTIN_TRANSPORTS",
    "FASTDDS_DEFAULT_PROFILES_FILE",
    "FASTRTPS_DEFAULT_PROFILES_FILE",
)
OPT_OUT_VARIABLE = "IVL_ROS_DDS_PROFILE"
# Socket receive buffer the subscriber profile asks for; the kernel caps it at net.core.rmem_max.
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
RMEM_MAX_FILE = Path("/proc/sys/net/core/rmem_max")


def image_transport_env(environ: Mapping[str, str], role: str) -> dict[str, str]:
    """Variables to add for a process of ``role`` (SUBSCRIBER or PUBLISHER); empty if the user decides."""
    if role not in PROFILE_FILES:
        raise ValueError(f"role must be {SUBSCRIBER!r} or {PUBLISHER!r}, got {role!r}")
    if any(environ.get(name) for name in USER_CHOICE_VARIABLES):
        return {}
    if environ.get(OPT_OUT_VARIABLE, "").lower() in ("off", "0", "false", "none", "default"):
        return {}
    rmw = environ.get("RMW_IMPLEMENTATION", "")
    if rmw and not rmw.startswith("rmw_fastrtps"):
        return {}
    if environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "").upper() == "LOCALHOST":
        role = PUBLISHER
    profile = find_share_file(PROFILE_FILES[role])
    return {"FASTDDS_DEFAULT_PROFILES_FILE": str(profile)} if profile is not None else {}


def configure_process(role: str, environ: MutableMapping[str, str] | None = None) -> str:
    """Apply :func:`image_transport_env` to this process (call before ``rclpy.init``); -> a line for the log."""
    environ = os.environ if environ is None else environ
    added = image_transport_env(environ, role)
    environ.update(added)
    if added:
        return f"Fast DDS profile for images: {added['FASTDDS_DEFAULT_PROFILES_FILE']}"
    chosen = [f"{name}={environ[name]}" for name in USER_CHOICE_VARIABLES if environ.get(name)]
    return f"Fast DDS transport left as configured ({', '.join(chosen) or 'defaults'})"


def receive_buffer_warning(rmem_max_file: Path = RMEM_MAX_FILE) -> str | None:
    """A warning when the kernel caps socket receive buffers below what large best-effort frames need."""
    try:
        rmem_max = int(rmem_max_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if rmem_max >= RECEIVE_BUFFER_BYTES:
        return None
    return (
        f"net.core.rmem_max is {rmem_max} bytes: best-effort camera frames larger than about that from other "
        f"processes may be lost. Raise it: sudo sysctl -w net.core.rmem_max={RECEIVE_BUFFER_BYTES} (and add it "
        "to /etc/sysctl.d/ to keep it)"
    )
