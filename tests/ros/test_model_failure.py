"""A model that fails to load and a bad topic name at launch: the node stays up, says why on /diagnostics and in
every response."""

from __future__ import annotations

import signal
import time

import pytest


@pytest.fixture(scope="module")
def node(start_node, client, tmp_path_factory):
    missing = tmp_path_factory.mktemp("nomodel") / "no_such_checkpoint"
    proc = start_node(model_path=str(missing), image_topics=["bad topic name!", "/camera/image_raw"])
    client.call("wait_ready", need_model=False)
    proc.wait_log("model failed to load")
    return proc


def test_failed_model_is_reported_everywhere(node, client):
    client.call("publish_image", topic="/camera/image_raw", seed=1)
    diag = {}
    end = time.monotonic() + 120
    while time.monotonic() < end and diag.get("model", {}).get("level") != 2:
        diag = client.call("diagnostics")
        time.sleep(0.2)
    model = diag["model"]
    assert model["level"] == 2 and model["model_loaded"] == "false"
    assert "no_such_checkpoint" in model["load_error"]
    for _ in range(2):
        reply = client.call("ask", question="What is here?")
        assert not reply["success"] and reply["message"].startswith("the model failed to load:")
        assert "no_such_checkpoint" in reply["message"]
    goal = client.call("describe", question="What is here?")
    assert not goal["success"] and goal["message"].startswith("the model failed to load:")
    assert node.popen.poll() is None


def test_invalid_topic_name_is_reported_not_fatal(node, client):
    node.wait_log("parameter image_topics: 'bad topic name!' is not a valid topic name")
    client.call("publish_image", topic="/camera/image_raw", seed=2)  # the valid topic is still subscribed
    diag = client.call("wait_diagnostics", camera="/camera/image_raw", min_received=1)["status"]
    assert "bad topic name!" in diag["model"]["last_error"]
    assert node.popen.poll() is None


def test_sigterm_stops_the_node_cleanly(node):
    assert node.stop(signal.SIGTERM) == 0
    assert "Traceback" not in node.log()
