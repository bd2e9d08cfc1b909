"""One captioner process, a camera process and a client process over DDS: captions, Ask, Describe,
bad inputs, concurrency and runtime parameters."""

from __future__ import annotations

import pytest

from ivl_ros.model.generation import CAPTION_SETTINGS, GenerationSettings
from tests.ros.conftest import RpcClient, ros_env, start_camera, wait_captions
from tests.ros.procs.common import make_frame

CAM, CAM2, SILENT = "/camera/image_raw", "/cam2/image_raw", "/cam3/image_raw"
MAX_TILES, MAX_NEW = 2, 16
QUESTION = "What is in front of the robot?"


@pytest.fixture(scope="module")
def node(start_node, client, tiny_ckpt):
    proc = start_node(
        model_path=str(tiny_ckpt),
        image_topics=[CAM, CAM2, SILENT],
        caption_rate_hz=5.0,
        max_tiles=MAX_TILES,
        max_new_tokens=MAX_NEW,
        max_pixels=100_000,
        max_question_tokens=64,
    )
    diag = client.call("wait_ready")
    assert diag["model"]["model_loaded"] == "true", proc.log()
    proc.model_id = tiny_ckpt.name
    return proc


def expected_answer(engine, seed, question=QUESTION, **kw):
    return engine.ask(
        make_frame(seed, **kw), question, max_tiles=MAX_TILES, settings=GenerationSettings(max_new_tokens=MAX_NEW)
    ).answer


def test_startup_line_names_the_model(node, tiny_ckpt):
    assert f"ivl_captioner: model {tiny_ckpt}" in node.log()
    assert f"model {tiny_ckpt.name} loaded" in node.log()


def test_ask_before_any_frame_says_so(node, client):
    reply = client.call("ask", question=QUESTION, camera=SILENT)
    assert not reply["success"]
    assert f"no frame received yet on {SILENT}" in reply["message"]


def test_captions_carry_the_frame_headers(node, client, domain, logs):
    client.call("captions")
    camera = start_camera(domain, logs, rate=10, record=True)  # a default-configured driver, until stopped
    camera.wait_matched()
    client.call("publish_image", topic=CAM2, seed=1, frame_id="cam2-frame", stamp=[7, 8])
    captions = wait_captions(
        client, lambda got: len([c for c in got if c["camera"] == CAM]) >= 3 and any(c["camera"] == CAM2 for c in got)
    )
    published = camera.stop()
    main = [c for c in captions if c["camera"] == CAM]
    assert len(main) >= 3, (client.call("diagnostics"), node.log())
    for cap in main:
        assert published["stamps"][cap["frame_id"].removeprefix("seq=")] == cap["stamp"]
        assert cap["text"] and cap["tiles"] >= 1 and cap["latency_ms"] > 0 and cap["model_id"] == node.model_id
    second = [c for c in captions if c["camera"] == CAM2]
    assert [(c["frame_id"], c["stamp"]) for c in second] == [("cam2-frame", [7, 8])]


def test_ask_answers_like_the_engine(node, client, engine):
    client.call("captions")
    stamp = client.call("publish_image", topic=CAM2, seed=3, stamp=[11, 12])["stamp"]
    wait_captions(client, lambda got: any(c["stamp"] == stamp for c in got))  # the frame has arrived
    reply = client.call("ask", question=QUESTION, camera=CAM2)
    assert reply["success"], reply
    assert reply["answer"] == expected_answer(engine, 3)
    assert reply["image_stamp"] == stamp and reply["latency_ms"] > 0
    supplied = client.call("ask", question=QUESTION, image={"seed": 5, "encoding": "bgr8", "stamp": [21, 22]})
    assert supplied["success"] and supplied["answer"] == expected_answer(engine, 5)
    assert supplied["image_stamp"] == [21, 22]


def test_describe_streams_feedback_before_the_result(node, client, engine):
    result = client.call("describe", question=QUESTION, image={"seed": 6, "encoding": "rgba8"})
    assert result["accepted"] and result["success"], result
    assert result["answer"] == expected_answer(engine, 6)
    feedback = result["feedback"]
    assert len(feedback) >= 2
    assert feedback[0]["t"] < result["result_t"]
    assert [f["tokens"] for f in feedback] == sorted(f["tokens"] for f in feedback)
    assert feedback[-1]["text"] == result["answer"]


def test_concurrent_asks_all_answered(node, client, engine):
    replies = client.call("ask_many", questions=[QUESTION] * 6, image={"seed": 4})
    want = expected_answer(engine, 4)
    assert [(r["success"], r["answer"]) for r in replies] == [(True, want)] * 6, replies


BAD_FRAMES = [
    ({"data_len": 100}, "expected step*height"),
    ({"step": 10}, "is less than width*channels"),
    ({"encoding": "yuv422"}, "'yuv422' is not supported"),
    ({"encoding": ""}, "encoding is empty"),
    ({"width": 0, "height": 0}, "zero size"),
    ({"width": 400, "height": 300}, "over max_pixels=100000"),
    ({"encoding": "32FC1"}, "a depth image on a colour topic?"),
]


def test_bad_frames_and_requests_never_kill_the_node(node, client, engine):
    for fields, _ in BAD_FRAMES:
        client.call("publish_image", topic=CAM2, **fields)
    bad_requests = [
        ({"question": ""}, "the question is empty"),
        ({"question": "   \n"}, "the question is empty"),
        ({"question": "robot chair table " * 40}, "tokens; the limit is max_question_tokens=64"),
        ({"question": "x" * 1_000_000}, "characters, more than 64 tokens can hold"),
        ({"question": QUESTION, "camera": "/nope"}, "is not one of image_topics"),
        ({"question": QUESTION, "max_new_tokens": -1}, "max_new_tokens must be"),
        ({"question": QUESTION, "max_new_tokens": 10**6}, "max_new_tokens must be"),
        ({"question": QUESTION, "image": {"data_len": 5}}, "the supplied image is unusable"),
        ({"question": QUESTION, "image": {"encoding": "16UC1"}}, "not supported"),
    ]
    for request, message in bad_requests:
        reply = client.call("ask", **request)
        assert not reply["success"] and message in reply["message"], (request, reply)
    bad_goal = client.call("describe", question="")
    assert not bad_goal["success"] and "the question is empty" in bad_goal["message"]
    for _, message in BAD_FRAMES:
        node.wait_log(message)
    assert node.popen.poll() is None
    good = client.call("ask", question=QUESTION, image={"seed": 8})
    assert good["success"] and good["answer"] == expected_answer(engine, 8)
    seq = client.call("wait_diagnostics")["seq"]
    diag = client.call("wait_diagnostics", newer_than=seq)["status"]  # published after every rejection was logged
    assert int(diag[CAM2]["rejected"]) >= len(BAD_FRAMES)


def test_parameters_change_at_run_time(node, client, engine):
    prompt = "Describe the room."
    assert all(r["successful"] for r in client.call("set_params", values={"prompt": prompt, "max_tiles": 1}))
    client.call("captions")
    client.call("publish_image", topic=CAM2, seed=9, width=128, frame_id="p")
    got = wait_captions(client, lambda got: any(c["frame_id"] == "p" for c in got))
    caps = [c for c in got if c["frame_id"] == "p"]
    want = engine.caption(
        make_frame(9, width=128), max_tiles=1, prompt=prompt, settings=CAPTION_SETTINGS.with_(max_new_tokens=MAX_NEW)
    )
    assert caps and caps[-1]["text"] == want.answer and caps[-1]["tiles"] == want.num_tiles
    refused = client.call("set_params", values={"model_path": "/elsewhere"})
    assert not refused[0]["successful"]
    # The caption prompt follows the prompt-length rule when it is set (not at every caption, 17 GB later).
    for too_long, why in (
        ("x" * 100_000, "characters, more than 64 tokens can hold"),
        ("robot chair table " * 40, "tokens; the limit is max_question_tokens=64"),
    ):
        result = client.call("set_params", values={"prompt": too_long})[0]
        assert not result["successful"] and result["reason"].startswith("parameter prompt:"), result
        assert why in result["reason"], result
    assert client.call("get_params", names=["prompt"]) == {"prompt": prompt}  # the previous one stays
    assert client.call("set_params", values={"caption_rate_hz": 0.0})[0]["successful"]
    client.call("captions")
    before = client.call("wait_diagnostics")
    received = int(before["status"][CAM2]["received"])
    client.call("publish_image", topic=CAM2, seed=10, frame_id="rate-zero", count=3)
    seen = client.call("wait_diagnostics", camera=CAM2, min_received=received + 1)
    client.call("wait_diagnostics", newer_than=seen["seq"] + 1)  # two more reports (>= 1 s): time for any caption
    assert [c for c in client.call("captions") if c["frame_id"] == "rate-zero"] == []
    client.call("set_params", values={"caption_rate_hz": 5.0, "prompt": "", "max_tiles": MAX_TILES})


LONG = 256


def test_abandoned_goal_stops_and_the_next_ask_is_answered(node, client, engine, domain, logs):
    """A client sends a long Describe goal and exits without cancelling: the node stops that generation as soon as
    it sees no action client left, so the next question does not wait for thousands of tokens. (A client killed
    with SIGKILL says no goodbye: DDS then notices after its lease, 20 s with Fast DDS defaults.)"""
    seed = _long_answer_seed(engine, tokens=LONG)  # an input the model answers at length (greedy, no early stop)
    doomed = RpcClient(ros_env(domain), logs / "doomed_client.log")
    doomed.call("describe_start", question=QUESTION, max_new_tokens=4096, image={"seed": seed})
    # The node stops a request whose client it has listed and then lost (a client not listed yet may be a fresh one
    # whose discovery lags its goal). Two diagnostics reports in a row listing the action client: the generation's
    # liveness checks (every 0.25 s) between them saw it.
    _wait_for_listed_clients(client, "describe_clients", reports=2)
    doomed.close()  # the process exits without cancelling its goal
    reply = client.call("ask", question=QUESTION, image={"seed": 12})
    assert reply["success"] and reply["answer"] == expected_answer(engine, 12), reply
    node.wait_log("stopped: the client went away")
    generated = int(node.log().split("stopped: the client went away (")[1].split(" tokens")[0])
    # Stopped because the client left, before the goal's 4096 tokens were out. (How many tokens the node makes
    # between the client's goodbye and its next liveness check depends on the machine's speed, so that count is
    # not bounded here: typically tens.)
    assert 0 < generated < 4096, generated


def _wait_for_listed_clients(client, key: str, reports: int) -> None:
    seq, streak = client.call("wait_diagnostics")["seq"], 0
    while streak < reports:
        diag = client.call("wait_diagnostics", newer_than=seq)
        seq = diag["seq"]
        streak = streak + 1 if int(diag["status"]["model"][key]) >= 1 else 0


def _long_answer_seed(engine, tokens: int) -> int:
    for seed in range(100, 140):
        answer = engine.ask(
            make_frame(seed), QUESTION, max_tiles=MAX_TILES, settings=GenerationSettings(max_new_tokens=tokens)
        )
        if len(answer.token_ids) == tokens:
            return seed
    raise AssertionError(f"the tiny model stops within {tokens} tokens for every seed tried")


def test_diagnostics_report_health(node, client):
    diag = client.call("diagnostics")
    model = diag["model"]
    assert model["level"] == 0 and model["backend"] == "torch" and model["model_id"] == node.model_id
    assert float(model["last_latency_ms"]) > 0 and int(model["frames_dropped"]) >= 0
    assert int(model["ask_clients"]) >= 1 and int(model["describe_clients"]) >= 0  # this client's /ivl/ask client
    assert diag[SILENT]["message"] == "no frame received yet"
