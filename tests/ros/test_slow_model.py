"""A deliberately slow model (debug_inference_delay_s): captions stay fresh, questions are not stuck behind
captions, captioning goes on while questions are answered.

Everything is asserted on counts and sequence numbers the user can see (frame seq in frame_id, caption order,
/diagnostics counters), never on wall-clock bounds between processes: under load every process is slower, the
counts are not.
"""

from __future__ import annotations

import statistics

import pytest

from tests.ros.conftest import start_camera, wait_captions

DELAY_S = 1.0
CAMERA_HZ = 20
QUESTION = "What is in front of the robot?"


@pytest.fixture(scope="module")
def node(start_node, client, tiny_ckpt):
    proc = start_node(
        model_path=str(tiny_ckpt), caption_rate_hz=30.0, max_tiles=1, max_new_tokens=8, debug_inference_delay_s=DELAY_S
    )
    assert client.call("wait_ready")["model"]["model_loaded"] == "true", proc.log()
    return proc


def _seq(caption: dict) -> int:
    return int(caption["frame_id"].removeprefix("seq="))


def test_no_backlog_and_questions_answered_while_captioning(node, client, domain, logs):
    client.call("captions")
    camera = start_camera(domain, logs, rate=CAMERA_HZ)  # until stopped
    camera.wait_matched()
    # Captioning runs (the first captions come after the camera's start-up, however long that takes).
    captions = wait_captions(client, lambda got: len(got) >= 3)
    asks = [client.call("ask", question=QUESTION) for _ in range(3)]
    captions += wait_captions(client, lambda got: len(got) >= 3)  # captioning goes on after the questions
    published = camera.stop()["published"]
    assert min(c["latency_ms"] for c in captions) >= DELAY_S * 1000  # the slow model is in effect

    # Fresh, not queued: each caption takes the newest frame, so consecutive captions skip the frames that arrived
    # during a model call (CAMERA_HZ * DELAY_S = 20 here, fewer if the camera process is starved). A queue would
    # caption consecutive frames (gap 1).
    seqs = [_seq(c) for c in captions]
    assert seqs == sorted(seqs)
    gaps = [b - a for a, b in zip(seqs, seqs[1:], strict=False)]
    assert statistics.median(gaps) >= 2, gaps
    diag = client.call("wait_diagnostics", camera="/camera/image_raw", min_received=1)["status"]["/camera/image_raw"]
    assert int(diag["dropped"]) > int(diag["received"]) / 2, diag  # most frames were replaced, not queued
    assert int(diag["received"]) <= published

    # Questions go before captions: while one is waiting, at most the caption already running finishes (a caption
    # published just before the question arrived may still be in flight to this client: 2 in all). Were captions
    # served first, a question would wait for every due caption — with captions always due here, forever.
    for ask in asks:
        assert ask["success"], ask
        start, end = ask["t0"], ask["t0"] + ask["elapsed_s"]
        during = [c for c in captions if start <= c["t"] <= end]
        assert len(during) <= 2, (ask, during)
    assert node.popen.poll() is None
