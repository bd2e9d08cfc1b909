"""A test client process driven over stdin/stdout with JSON lines: one request line in, one reply line out.

It is a separate rclpy process (its own DDS participant) with default ROS 2 settings (the test gives it nothing but
ROS_DOMAIN_ID), so every test talks to the node over DDS exactly as a user's tools would. Ops: wait_ready,
publish_image, publish_compressed, ask, ask_many, describe, captions, diagnostics, wait_diagnostics, get_params,
set_params, caption_files, quit.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np
import rclpy
from common import make_frame
from diagnostic_msgs.msg import DiagnosticArray
from PIL import Image as PILImage
from rclpy.action import ActionClient
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from ivl_interfaces.action import Describe
from ivl_interfaces.msg import Caption
from ivl_interfaces.srv import Ask

# Generous deadlines: these only bound how long a broken run hangs; a healthy run under load never gets near them.
MATCH_TIMEOUT_S = 120.0
REPLY_TIMEOUT_S = 180.0


def spin_future(executor, future, timeout: float):
    """Spin ``executor`` on this thread until ``future`` is done."""
    executor.spin_until_future_complete(future, timeout_sec=timeout)
    if not future.done():
        raise TimeoutError(f"no reply within {timeout} s")
    return future.result()


def wait_future(future, timeout: float):
    event = threading.Event()
    future.add_done_callback(lambda _f: event.set())
    if not event.wait(timeout):
        raise TimeoutError(f"no reply within {timeout} s")
    return future.result()


class Client(Node):
    def __init__(self) -> None:
        super().__init__("test_client")
        self.captions: list[dict] = []
        self.diag: DiagnosticArray | None = None
        self.diag_count = 0  # /diagnostics messages received so far: a sequence number to wait on
        self.lock = threading.Lock()
        self.create_subscription(Caption, "/ivl_captioner/caption", self._on_caption, QoSProfile(depth=100))
        self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, QoSProfile(depth=10))
        self.ask_client = self.create_client(Ask, "/ivl/ask")
        # The action client exists only during describe ops: a user's service-only client has none, and the node
        # treats "no action client left" as "nobody will take this goal's result".
        self.describe_client: ActionClient | None = None  # only describe_start keeps one
        self.describe_executor: SingleThreadedExecutor | None = None
        self.describe_spinner: threading.Thread | None = None
        self.describe_node: Node | None = None
        self.params = AsyncParameterClient(self, "ivl_captioner")
        self.pubs: dict[tuple[str, str], object] = {}

    def _on_caption(self, msg: Caption) -> None:
        now = self.get_clock().now().nanoseconds
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        with self.lock:
            self.captions.append(
                {
                    "camera": msg.camera,
                    "text": msg.text,
                    "model_id": msg.model_id,
                    "tiles": msg.tiles,
                    "latency_ms": msg.latency_ms,
                    "frame_id": msg.header.frame_id,
                    "stamp": [msg.header.stamp.sec, msg.header.stamp.nanosec],
                    "age_s": (now - stamp) / 1e9,
                    "t": time.monotonic(),
                }
            )

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            self.diag = msg
            self.diag_count += 1

    def _pub(self, kind: str, topic: str):
        key = (kind, topic)
        if key not in self.pubs:
            msg_type = Image if kind == "raw" else CompressedImage
            pub = self.create_publisher(msg_type, topic, qos_profile_sensor_data)
            end = time.monotonic() + MATCH_TIMEOUT_S
            while pub.get_subscription_count() == 0 and time.monotonic() < end:
                time.sleep(0.05)  # a frame published before the node's subscription matched would be lost
            if pub.get_subscription_count() == 0:
                raise TimeoutError(f"no subscriber matched {topic} within {MATCH_TIMEOUT_S} s")
            self._wait_node_knows_publishers(topic)
            if kind == "raw":
                self._wait_reader_matched(pub, topic)
            self.pubs[key] = pub
        return self.pubs[key]

    def _wait_reader_matched(self, pub, topic: str) -> None:
        """Publish a frame the node rejects (never stores or captions) until its /diagnostics count it: from then on
        the node's reader has matched this writer. Before that, a best-effort frame can be dropped even though our
        writer has matched the reader and the node's graph lists our writer (the reader matches a moment later; a
        CI run lost the first two frames of a test so). Compressed topics have no rejection message of their own to
        spare: their tests publish until the node logs what they wait for."""

        def rejected(status: dict) -> int:
            return int(status.get(topic, {}).get("rejected", 0))

        latest = self.op_wait_diagnostics()
        before = rejected(latest["status"])
        probe = image_msg(encoding=MATCH_PROBE_ENCODING)
        end = time.monotonic() + MATCH_TIMEOUT_S
        while time.monotonic() < end:
            pub.publish(probe)
            latest = self.op_wait_diagnostics(newer_than=latest["seq"], timeout=MATCH_TIMEOUT_S)  # 1 Hz reports
            if rejected(latest["status"]) > before:
                return
        raise TimeoutError(f"the node never counted a probe frame on {topic}: {latest['status']}")

    @contextlib.contextmanager
    def _action_client(self):
        """An action client on a node of its own, spun only by the calling thread while the op runs, then destroyed:
        never touched by the background executor, so destroying it cannot race that executor's wait set."""
        node = rclpy.create_node("test_client_describe")
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        client = ActionClient(node, Describe, "/ivl/describe")
        try:
            yield client, executor
        finally:
            client.destroy()
            executor.shutdown()
            node.destroy_node()

    def _wait_node_knows_publishers(self, topic: str) -> None:
        """Our publisher has matched the node's reader; a best-effort frame is only kept once the node's reader has
        matched our writer too. The node reports the publishers it knows per camera on /diagnostics: wait for it to
        know as many as this process sees on the topic (the same discovery data matches its reader)."""
        camera = topic.removesuffix("/compressed")
        wanted = self.count_publishers(topic)
        end = time.monotonic() + MATCH_TIMEOUT_S
        while time.monotonic() < end:
            if int(self.op_diagnostics().get(camera, {}).get("publishers", 0)) >= wanted:
                return
            time.sleep(0.05)
        raise TimeoutError(f"the node never reported {wanted} publisher(s) on {topic}: {self.op_diagnostics()}")

    # -- ops -------------------------------------------------------------------------------------------
    def op_wait_ready(self, timeout: float = REPLY_TIMEOUT_S, need_model: bool = True) -> dict:
        end = time.monotonic() + timeout
        if not self.ask_client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError("/ivl/ask did not appear")
        with self._action_client() as (describe, _executor):
            describe.wait_for_server(timeout_sec=max(0.1, end - time.monotonic()))
        while need_model and time.monotonic() < end:
            d = self.op_diagnostics()
            if d.get("model", {}).get("model_loaded") == "true":
                return d
            time.sleep(0.1)
        return self.op_diagnostics()

    def op_publish_image(self, topic: str, count: int = 1, **image) -> dict:
        """Publish ``count`` copies of ``image_msg(**image)`` on ``topic``."""
        msg = image_msg(**image)
        pub = self._pub("raw", topic)
        for _ in range(count):
            pub.publish(msg)
        return {"stamp": [msg.header.stamp.sec, msg.header.stamp.nanosec]}

    def op_publish_compressed(
        self,
        topic: str,
        seed: int = 0,
        fmt: str = "jpeg",
        data_b64: str | None = None,
        frame_id: str = "",
        stamp: list[int] | None = None,
        width: int = 64,
        height: int = 48,
    ) -> dict:
        msg = CompressedImage(format=fmt)
        if data_b64 is not None:
            msg.data = base64.b64decode(data_b64)
        else:
            buf = io.BytesIO()
            PILImage.fromarray(make_frame(seed, width, height)).save(buf, "JPEG" if fmt == "jpeg" else "PNG")
            msg.data = buf.getvalue()
        msg.header.frame_id = frame_id
        if stamp:
            msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
        self._pub("compressed", topic).publish(msg)
        return {}

    def op_ask(
        self,
        question: str,
        image: dict | None = None,
        camera: str = "",
        max_new_tokens: int = 0,
        timeout: float = REPLY_TIMEOUT_S,
    ) -> dict:
        req = Ask.Request(question=question, camera=camera, max_new_tokens=max_new_tokens)
        if image is not None:
            req.image = image_msg(**image)
        if not self.ask_client.wait_for_service(timeout_sec=timeout):  # a request sent before discovery is lost
            raise TimeoutError("/ivl/ask did not appear")
        start = time.monotonic()
        resp = wait_future(self.ask_client.call_async(req), timeout)
        return {
            "answer": resp.answer,
            "success": resp.success,
            "message": resp.message,
            "latency_ms": resp.latency_ms,
            "image_stamp": [resp.image_stamp.sec, resp.image_stamp.nanosec],
            "elapsed_s": time.monotonic() - start,
            "t0": start,
        }

    def op_ask_many(
        self, questions: list[str], image: dict | None = None, timeout: float = REPLY_TIMEOUT_S
    ) -> list[dict]:
        if not self.ask_client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError("/ivl/ask did not appear")
        start = time.monotonic()
        futures = []
        for q in questions:
            req = Ask.Request(question=q)
            if image is not None:
                req.image = image_msg(**image)
            futures.append(self.ask_client.call_async(req))
        out = []
        for fut in futures:
            resp = wait_future(fut, timeout)
            out.append(
                {
                    "answer": resp.answer,
                    "success": resp.success,
                    "message": resp.message,
                    "elapsed_s": time.monotonic() - start,
                }
            )
        return out

    def op_describe(
        self,
        question: str,
        image: dict | None = None,
        camera: str = "",
        max_new_tokens: int = 0,
        timeout: float = REPLY_TIMEOUT_S,
    ) -> dict:
        goal = Describe.Goal(question=question, camera=camera, max_new_tokens=max_new_tokens)
        if image is not None:
            goal.image = image_msg(**image)
        with self._action_client() as (describe, executor):
            feedback: list[dict] = []
            if not describe.wait_for_server(timeout_sec=timeout):
                raise TimeoutError("/ivl/describe did not appear")
            start = time.monotonic()

            def on_feedback(msg) -> None:
                feedback.append(
                    {"text": msg.feedback.partial_text, "tokens": msg.feedback.tokens, "t": time.monotonic() - start}
                )

            handle = spin_future(executor, describe.send_goal_async(goal, feedback_callback=on_feedback), timeout)
            if not handle.accepted:
                return {"accepted": False}
            result = spin_future(executor, handle.get_result_async(), timeout)
            r = result.result
            # Feedback is a separate topic from the result: wait (an event, bounded) for the last partial text.
            end = time.monotonic() + MATCH_TIMEOUT_S
            while r.success and not any(f["text"] == r.answer for f in feedback) and time.monotonic() < end:
                executor.spin_once(timeout_sec=0.05)
            return {
                "accepted": True,
                "status": result.status,
                "answer": r.answer,
                "success": r.success,
                "message": r.message,
                "result_t": time.monotonic() - start,
                "feedback": feedback,
            }

    def op_describe_start(
        self, question: str, max_new_tokens: int, image: dict | None = None, timeout: float = REPLY_TIMEOUT_S
    ) -> dict:
        """Send a goal and return once its first feedback arrived, leaving it running (the test then kills this
        process: a client that vanishes without cancelling)."""
        goal = Describe.Goal(question=question, max_new_tokens=max_new_tokens)
        if image is not None:
            goal.image = image_msg(**image)
        first = threading.Event()
        # Kept (not destroyed) and spun by a thread of its own: this process is then closed with the goal running.
        node = self.describe_node = rclpy.create_node("test_client_describe")
        self.describe_executor = SingleThreadedExecutor()
        self.describe_executor.add_node(node)
        self.describe_client = ActionClient(node, Describe, "/ivl/describe")
        self.describe_spinner = threading.Thread(target=self.describe_executor.spin, daemon=True)
        self.describe_spinner.start()
        if not self.describe_client.wait_for_server(timeout_sec=timeout):
            raise TimeoutError("/ivl/describe did not appear")
        handle = wait_future(
            self.describe_client.send_goal_async(goal, feedback_callback=lambda _m: first.set()), timeout
        )
        if not handle.accepted or not first.wait(timeout):
            raise TimeoutError("the goal was not accepted or sent no feedback")
        return {"accepted": True}

    def op_caption_files(self, topic: str, paths: list[str], timeout: float = 120.0) -> list[str]:
        """Publish each image file as an rgb8 frame with its own stamp, re-sending it until the node's caption
        for exactly that stamp arrives (the node keeps only the latest frame); one caption per file."""
        pub = self._pub("raw", topic)
        texts = []
        end = time.monotonic() + timeout
        for i, path in enumerate(paths):
            rgb = np.asarray(PILImage.open(path).convert("RGB"))
            msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3)
            msg.data = rgb.tobytes()
            msg.header.frame_id = f"regression-{i}"
            msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + i, 0
            while True:
                with self.lock:
                    hit = [c for c in self.captions if c["stamp"] == [1000 + i, 0]]
                if hit:
                    texts.append(hit[0]["text"])
                    break
                if time.monotonic() > end:
                    raise TimeoutError(f"no caption for {path} within {timeout} s")
                pub.publish(msg)
                time.sleep(0.25)
        return texts

    def op_captions(self, clear: bool = True) -> list[dict]:
        with self.lock:
            out = list(self.captions)
            if clear:
                self.captions.clear()
        return out

    def op_diagnostics(self) -> dict:
        with self.lock:
            msg = self.diag
        if msg is None:
            return {}
        out = {}
        for s in msg.status:
            key = "model" if s.name.endswith(": model") else s.name.split(" camera ", 1)[-1]
            out[key] = {
                "level": s.level[0] if isinstance(s.level, bytes) else int(s.level),
                "message": s.message,
                **{kv.key: kv.value for kv in s.values},
            }
        return out

    def op_wait_diagnostics(
        self, camera: str | None = None, min_received: int = 0, newer_than: int = -1, timeout: float = REPLY_TIMEOUT_S
    ) -> dict:
        """Wait for a /diagnostics message numbered above ``newer_than`` in which ``camera`` has received at least
        ``min_received`` frames -> {"seq": its number, "status": the parsed statuses}."""
        end = time.monotonic() + timeout
        while True:
            with self.lock:
                seq = self.diag_count
            status = self.op_diagnostics()
            received = int(status.get(camera, {}).get("received", 0)) if camera else 0
            if seq > newer_than and received >= min_received:
                return {"seq": seq, "status": status}
            if time.monotonic() > end:
                raise TimeoutError(f"diagnostics never showed {min_received} frames on {camera} (last: {status})")
            time.sleep(0.05)

    def op_get_params(self, names: list[str]) -> dict:
        result = wait_future(self.params.get_parameters(names), 10.0)
        pairs = zip(names, result.values, strict=True)
        return {n: Parameter.from_parameter_msg(_named(n, v)).value for n, v in pairs}

    def op_set_params(self, values: dict) -> list[dict]:
        params = [Parameter(k, value=v) for k, v in values.items()]
        result = wait_future(self.params.set_parameters(params), 10.0)
        return [{"successful": r.successful, "reason": r.reason} for r in result.results]


def _named(name, value):
    from rcl_interfaces.msg import Parameter as ParameterMsg

    return ParameterMsg(name=name, value=value)


# The encoding of the match probe (_wait_reader_matched): one the node rejects with a message no test waits for.
MATCH_PROBE_ENCODING = "ivl-match-probe"


def image_msg(
    seed: int = 0,
    width: int = 64,
    height: int = 48,
    encoding: str = "rgb8",
    step: int | None = None,
    data_len: int | None = None,
    frame_id: str = "",
    stamp: list[int] | None = None,
) -> Image:
    """An Image whose fields may be deliberately inconsistent (step/data_len overrides) for bad-input tests."""
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "32FC1": 4, "16UC1": 2}.get(encoding, 3)
    rgb = make_frame(seed, max(width, 1), max(height, 1))[:height, :width]
    if encoding in ("rgb8", "bgr8", "rgba8", "bgra8", "mono8"):
        arr = {
            "rgb8": rgb,
            "bgr8": rgb[:, :, ::-1],
            "mono8": rgb[:, :, :1],
            "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
            "bgra8": np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 255, np.uint8)]),
        }[encoding]
    else:
        arr = np.zeros((height, width, channels), np.uint8)
    row = width * channels
    step = row if step is None else step
    padded = np.zeros((height, max(step, row)), np.uint8)
    padded[:, :row] = arr.reshape(height, row)
    data = padded[:, :step].tobytes() if step >= 0 else b""
    if data_len is not None:
        data = (data + bytes(max(0, data_len - len(data))))[:data_len]
    msg = Image(height=height, width=width, encoding=encoding, step=max(step, 0))
    msg.data = data
    msg.header.frame_id = frame_id
    if stamp:
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
    return msg


def main() -> None:
    rclpy.init()
    client = Client()
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(client)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    print(json.dumps({"ok": True, "result": "started"}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        if op == "quit":
            break
        try:
            result = getattr(client, f"op_{op}")(**request)
            reply = {"ok": True, "result": result}
        except Exception as exc:
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
    # A clean exit, so DDS says goodbye at once: stop every spinning thread and wait for it before any entity is
    # destroyed (a thread still inside rcl_wait at interpreter exit aborts the process with std::terminate, and
    # an aborted participant is only noticed by the others after its lease, 20 s later).
    executor.shutdown(timeout_sec=10.0)
    spinner.join(timeout=10.0)
    if client.describe_executor is not None:
        client.describe_executor.shutdown(timeout_sec=10.0)
        client.describe_spinner.join(timeout=10.0)
        client.describe_client.destroy()
        client.describe_node.destroy_node()
    client.destroy_node()
    rclpy.try_shutdown()
    if spinner.is_alive() or (client.describe_spinner is not None and client.describe_spinner.is_alive()):
        raise SystemExit("a spinning thread did not stop within 10 s")


if __name__ == "__main__":
    main()
