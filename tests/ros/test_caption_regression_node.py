"""Caption regression end to end through the running ROS node: the regression frames are published on the camera
topic, captions are collected from /ivl_captioner/caption, scored, and compared with the committed baseline."""

from __future__ import annotations

import pytest

from tests.eval.test_caption_regression import DEMO, REGRESSION, _images, verdict
from tests.ros.conftest import SingleThreadEngine

pytestmark = pytest.mark.skipif(not (DEMO / "config.json").is_file(), reason="models/ivl-demo is not in this checkout")


def test_node_captions_meet_the_baseline_and_equal_the_core(start_node, client):
    node = start_node(model_path=str(DEMO), caption_rate_hz=10.0)
    client.call("wait_ready", timeout=120.0)
    paths = [str(REGRESSION / "images" / im["file_name"]) for im in _images()]
    texts = client.call("caption_files", topic="/camera/image_raw", paths=paths, timeout=240.0)
    node_captions = {im["id"]: text for im, text in zip(_images(), texts, strict=True)}
    result = verdict(node_captions)
    assert result.passed, str(result)

    from ivl_ros.model.engine import VisionLanguageEngine

    core = SingleThreadEngine(VisionLanguageEngine.load(DEMO))
    for im, text in zip(_images(), texts, strict=True):
        assert text == core.caption(REGRESSION / "images" / im["file_name"]).answer, im["file_name"]
    assert node.popen.poll() is None
