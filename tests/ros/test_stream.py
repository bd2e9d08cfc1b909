"""Frames published by a separate camera process come back as Caption messages stamped like their frames."""

from __future__ import annotations

import json

from conftest import start_camera


def test_captions_carry_the_frame_headers(start_node, client, tiny_ckpt, domain, tmp_path):
    node = start_node(model_path=str(tiny_ckpt), caption_rate_hz=5.0, max_tiles=2)
    node.wait_log("ivl_captioner: model")
    client.call("wait_ready")
    camera = start_camera(domain, tmp_path, rate=10, duration=3, record=True)
    out, _ = camera.communicate(timeout=30)
    published = json.loads(out.strip().splitlines()[-1])
    captions = client.call("captions")
    assert published["published"] >= 25
    assert len(captions) >= 5, node.log()
    for cap in captions:
        seq = cap["frame_id"].removeprefix("seq=")
        assert published["stamps"][seq] == cap["stamp"]
        assert cap["camera"] == "/camera/image_raw"
        assert cap["model_id"] == tiny_ckpt.name
        assert cap["text"] and cap["tiles"] >= 1 and cap["latency_ms"] > 0
    assert "model tiny_internvl2 loaded" in node.log()
