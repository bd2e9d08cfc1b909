"""The node and the ROS 2 world around it: default-configured camera drivers of both reliability kinds, at camera
sizes, get captions; the transport rule and the reliability matching rule on their own.

Delivery ratios under sustained 30 Hz streams are measured by benchmarks/node_delivery.py (results in
benchmarks/results/node_delivery.md); here every configuration must simply produce captions.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from rclpy.qos import ReliabilityPolicy

from ivl_ros import transport
from ivl_ros.node.cameras import BEST_EFFORT, RELIABLE, matching_reliability
from tests.ros.conftest import start_camera, wait_captions

NS = {"dds": "http://www.eprosima.com"}
SIZES = {"vga": (640, 480), "720p": (1280, 720)}


def test_transport_rule_keeps_default_participants_reachable(tmp_path):
    sub = transport.image_transport_env({}, transport.SUBSCRIBER)
    pub = transport.image_transport_env({}, transport.PUBLISHER)
    assert list(sub) == list(pub) == ["FASTDDS_DEFAULT_PROFILES_FILE"]
    assert sub["FASTDDS_DEFAULT_PROFILES_FILE"].endswith("fastdds_image_subscriber.xml")
    assert pub["FASTDDS_DEFAULT_PROFILES_FILE"].endswith("fastdds_image_publisher.xml")
    # Fragmented UDP samples are lost under LOCALHOST discovery: receivers take the shared-memory profile there.
    local = transport.image_transport_env({"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}, transport.SUBSCRIBER)
    assert local == pub
    for explicit in (
        {"FASTDDS_BUILTIN_TRANSPORTS": "SHM"},
        {"FASTDDS_DEFAULT_PROFILES_FILE": "/mine.xml"},
        {"FASTRTPS_DEFAULT_PROFILES_FILE": "/mine.xml"},
        {"IVL_ROS_DDS_PROFILE": "off"},
        {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"},
    ):
        assert transport.image_transport_env(explicit, transport.SUBSCRIBER) == {}, explicit
    assert transport.image_transport_env({"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"}, transport.SUBSCRIBER) == sub
    env = {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}
    assert "left as configured (FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA)" in transport.configure_process(
        transport.SUBSCRIBER, env
    )
    assert env == {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}
    with pytest.raises(ValueError, match="role"):
        transport.image_transport_env({}, "camera")


def _profile(path: str) -> dict:
    root = ET.parse(path).getroot()
    descriptors = {
        d.findtext("dds:transport_id", namespaces=NS): d for d in root.iterfind(".//dds:transport_descriptor", NS)
    }
    participant = root.find(".//dds:participant", NS)
    used = [t.text for t in participant.iterfind(".//dds:userTransports/dds:transport_id", NS)]
    return {
        "types": [descriptors[t].findtext("dds:type", namespaces=NS) for t in used],
        "builtin": participant.findtext(".//dds:useBuiltinTransports", namespaces=NS),
        "default": participant.get("is_default_profile"),
        "descriptors": [descriptors[t] for t in used],
    }


def test_profiles_are_what_the_rule_says():
    sub = _profile(transport.image_transport_env({}, transport.SUBSCRIBER)["FASTDDS_DEFAULT_PROFILES_FILE"])
    pub = _profile(transport.image_transport_env({}, transport.PUBLISHER)["FASTDDS_DEFAULT_PROFILES_FILE"])
    for profile in (sub, pub):
        assert profile["default"] == "true" and profile["builtin"] == "false"
        assert "UDPv4" in profile["types"]  # default discovery: default participants see this one
        (udp,) = [d for d in profile["descriptors"] if d.findtext("dds:type", namespaces=NS) == "UDPv4"]
        assert int(udp.findtext("dds:receiveBufferSize", namespaces=NS)) >= transport.RECEIVE_BUFFER_BYTES
    assert sub["types"] == ["UDPv4"]  # no SHM: default publishers must not squeeze frames into their own segment
    (shm,) = [d for d in pub["descriptors"] if d.findtext("dds:type", namespaces=NS) == "SHM"]
    assert int(shm.findtext("dds:segment_size", namespaces=NS)) >= 1280 * 720 * 3 * 4


def test_receive_buffer_warning(tmp_path):
    small, large, broken = tmp_path / "small", tmp_path / "large", tmp_path / "broken"
    small.write_text("212992\n")
    large.write_text(f"{transport.RECEIVE_BUFFER_BYTES}\n")
    broken.write_text("n/a")
    assert "sysctl -w net.core.rmem_max=4194304" in transport.receive_buffer_warning(small)
    assert transport.receive_buffer_warning(large) is None
    assert transport.receive_buffer_warning(broken) is None
    assert transport.receive_buffer_warning(tmp_path / "missing") is None


def test_reliability_follows_the_publishers():
    R, B = ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT
    assert matching_reliability([], BEST_EFFORT) == BEST_EFFORT  # nobody yet: keep (best effort matches all)
    assert matching_reliability([], RELIABLE) == RELIABLE
    assert matching_reliability([R], BEST_EFFORT) == RELIABLE
    assert matching_reliability([R, R], BEST_EFFORT) == RELIABLE
    assert matching_reliability([R, B], RELIABLE) == BEST_EFFORT  # a reliable reader would cut the BE one off
    assert matching_reliability([B], RELIABLE) == BEST_EFFORT


@pytest.fixture(scope="module")
def node(start_node, client, tiny_ckpt):
    proc = start_node(model_path=str(tiny_ckpt), caption_rate_hz=10.0, max_tiles=1, max_new_tokens=8)
    assert client.call("wait_ready")["model"]["model_loaded"] == "true", proc.log()
    return proc


@pytest.mark.parametrize("reliable", [False, True], ids=["best_effort", "reliable"])
@pytest.mark.parametrize("size", list(SIZES))
def test_default_configured_camera_frames_get_captions(node, client, domain, logs, size, reliable):
    if not reliable and transport.receive_buffer_warning():
        pytest.skip(
            f"best-effort frames this large need net.core.rmem_max >= {transport.RECEIVE_BUFFER_BYTES} "
            f"({transport.receive_buffer_warning()})"
        )
    width, height = SIZES[size]
    tag = f"{size}-{'reliable' if reliable else 'best_effort'}-"
    client.call("captions")
    camera = start_camera(domain, logs, rate=30, width=width, height=height, reliable=reliable, tag=tag)
    camera.wait_matched()
    want = "reliable" if reliable else "best_effort"
    try:
        captions = wait_captions(client, lambda got: sum(c["frame_id"].startswith(tag) for c in got) >= 2)
        diag = _wait_reliability(client, want)  # the node follows the publisher (re-checked once a second)
    finally:
        published = camera.stop()["published"]
    ours = [c for c in captions if c["frame_id"].startswith(tag)]
    assert all(c["text"] and c["camera"] == "/camera/image_raw" for c in ours)
    print(f"{tag} published {published}, captions {len(ours)}, node received so far {diag['received']}")


def _wait_reliability(client, want: str, reports: int = 300) -> dict:
    seq = -1
    for _ in range(reports):  # one report a second: a generous bound for a broken run only
        report = client.call("wait_diagnostics", newer_than=seq)
        seq, camera = report["seq"], report["status"].get("/camera/image_raw", {})
        if camera.get("reliability") == want:
            return camera
    raise AssertionError(f"the camera subscription never became {want}: {camera}")
