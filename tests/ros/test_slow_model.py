"""A deliberately slow model (debug_inference_delay_s): captions stay fresh, questions are not stuck behind
captions, captioning goes on while questions are answered."""

from __future__ import annotations

import json
import time

import pytest

from tests.ros.conftest import start_camera

DELAY_S = 0.6


@pytest.fixture(scope="module")
def node(start_node, client, tiny_ckpt):
    proc = start_node(model_path=str(tiny_ckpt), caption_rate_hz=30.0, max_tiles=1, max_new_tokens=8,
                      debug_inference_delay_s=DELAY_S)
    assert client.call("wait_ready")["model"]["model_loaded"] == "true", proc.log()
    return proc


def test_no_backlog_and_questions_answered_while_captioning(node, client, domain, logs):
    client.call("captions")
    camera = start_camera(domain, logs, rate=20, duration=8)
    asks = []
    end = time.monotonic() + 20
    while not client.call("captions", clear=False) and time.monotonic() < end:
        time.sleep(0.1)  # the camera process is up and captioning runs (its start-up time varies with load)
    for _ in range(3):
        asks.append(client.call("ask", question="What is in front of the robot?"))
    out, _ = camera.communicate(timeout=30)
    published = json.loads(out.strip().splitlines()[-1])["published"]
    captions = client.call("captions")
    model_s = max(c["latency_ms"] for c in captions) / 1000.0
    assert model_s >= DELAY_S
    # Fresh: a caption describes a frame at most one model call older than its own call (+ scheduling slack);
    # with a queue of frames the age would grow with every caption.
    ages = [c["age_s"] for c in captions]
    assert max(ages) < 2 * model_s + 1.0, ages
    for ask in asks:
        assert ask["success"], ask
        # Waits at most for the one caption already running, then its own call.
        assert ask["elapsed_s"] < 2 * model_s + 1.0, (ask, model_s)
    first_ask, last_ask_end = asks[0]["t0"], asks[-1]["t0"] + asks[-1]["elapsed_s"]
    during = [c for c in captions if first_ask <= c["t"] <= last_ask_end + model_s]
    assert during, "captioning stopped while questions were answered"
    diag = client.call("diagnostics")["/camera/image_raw"]
    assert int(diag["dropped"]) > published / 2  # most frames were skipped, not queued
    assert node.popen.poll() is None
