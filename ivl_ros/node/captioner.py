"""CaptionNode (``ivl_captioner``): camera topics in, captions out, ``/ivl/ask`` and ``/ivl/describe``.

Threading (why it looks like this): the executor threads only convert frames, answer parameter/service
traffic and publish diagnostics. Every model call runs on one inference thread (:mod:`worker`), so a slow
model can never starve subscriptions or services. Frames are kept in latest-only slots (:mod:`frames`),
so captions always describe the newest frame. Service/action callbacks are coroutines that await the
inference thread, so any number of concurrent requests holds no executor thread.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import rclpy
from builtin_interfaces.msg import Time
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.action import ActionServer, CancelResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException, InvalidTopicNameException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.expand_topic_name import expand_topic_name
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from rclpy.task import Future
from rclpy.validate_full_topic_name import validate_full_topic_name
from sensor_msgs.msg import CompressedImage, Image

from ivl_interfaces.action import Describe
from ivl_interfaces.msg import Caption
from ivl_interfaces.srv import Ask
from ivl_ros.errors import IvlError
from ivl_ros.model.defaults import default_model_path, demo_notice
from ivl_ros.model.generation import CAPTION_SETTINGS, GenerationSettings
from ivl_ros.model.options import MAX_PIXELS_LIMIT
from ivl_ros.node import diagnostics
from ivl_ros.node.cameras import CameraSubscriptions
from ivl_ros.node.debug_image import annotate
from ivl_ros.node.frames import LatestFrames
from ivl_ros.node.image_msgs import FrameError, compressed_to_rgb, image_to_rgb, is_empty, rgb_to_image
from ivl_ros.node.model_holder import DelayedEngine, ModelHolder
from ivl_ros.node.params import PARAMS, ParamSpec
from ivl_ros.node.worker import InferenceWorker
from ivl_ros.transport import SUBSCRIBER, configure_process, receive_buffer_warning

NODE_NAME = "ivl_captioner"
ASK_SERVICE = "/ivl/ask"
DESCRIBE_ACTION = "/ivl/describe"
DESCRIBE_FEEDBACK_TOPIC = f"{DESCRIBE_ACTION}/_action/feedback"  # every action client subscribes to it
LIVENESS_CHECK_S = 0.25  # how often a running request looks whether its client is still there
PROMPT_CHARS_PER_TOKEN_BOUND = 64  # no tokenizer piece is longer (InternLM2's longest is 16 characters)
MAX_REQUEST_TOKENS = 4096
LOG_REPEAT_S = 5.0  # the same bad-frame message per camera is logged at most this often


@dataclass
class Reply:
    answer: str = ""
    success: bool = False
    message: str = ""
    latency_ms: float = 0.0
    image_stamp: Any = None
    cancelled: bool = False


@dataclass
class _Request:
    rgb: Any
    question: str
    settings: GenerationSettings
    stamp: Any
    source: str


class _Cancelled(Exception):
    pass


def _timed(call: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """-> (call's result, its wall time in ms). The node reports the whole engine call as latency_ms: tiling and
    tokenisation count, since a caption's frame ages through them as much as through the model."""
    start = time.perf_counter()
    result = call(*args, **kwargs)
    return result, (time.perf_counter() - start) * 1000.0


class _Abandoned(Exception):
    """A request whose client went away or that ran past request_timeout_s; the message says which."""


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    desc = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
    if spec.choices:
        desc.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.low is not None and isinstance(spec.default, int) and not isinstance(spec.default, bool):
        desc.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=1)]
    elif spec.low is not None and isinstance(spec.default, float):
        desc.floating_point_range = [
            FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high), step=0.0)
        ]
    return desc


class CaptionNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        for spec in PARAMS:
            self._declare(spec)
        self.last_error = ""
        self.cameras = self._camera_list()
        self.frames = LatestFrames(self.cameras)
        self._last_logged: dict[str, tuple[str, float]] = {}
        self._last_caption_start = 0.0
        self.counters = {"captions_published": 0, "requests_served": 0, "requests_failed": 0}
        self.last_latency_ms = 0.0

        self._requests_group = ReentrantCallbackGroup()
        self._diag_group = MutuallyExclusiveCallbackGroup()
        self.caption_pub = self.create_publisher(Caption, "~/caption", QoSProfile(depth=10))
        # Reliable: matches both kinds of viewer, and reliable ones (rviz's default) get the large frames repaired.
        self.debug_pub = self.create_publisher(Image, "~/debug_image", QoSProfile(depth=1))
        self.camera_subs = self._subscribe_cameras()
        self.create_service(Ask, ASK_SERVICE, self._on_ask, callback_group=self._requests_group)
        self._describe_server = ActionServer(
            self,
            Describe,
            DESCRIBE_ACTION,
            execute_callback=self._on_describe,
            cancel_callback=lambda _req: CancelResponse.ACCEPT,
            callback_group=self._requests_group,
        )
        self._diag_pub = self._diagnostics_publisher()

        self.worker = InferenceWorker(self._caption_due, self._caption, self._on_worker_error)
        self.model = ModelHolder(self._load_engine, self._on_model_ready, self._on_model_failed)
        self.add_on_set_parameters_callback(self._validate_params)
        self.add_post_set_parameters_callback(self._on_params_set)
        p = self.p
        self.get_logger().info(
            f"{NODE_NAME}: model {p('model_path') or '(model_path not set)'} (backend {p('backend')}, device "
            f"{p('device')}, dtype {p('dtype')}); cameras {self.cameras}{' (compressed)' if p('compressed') else ''}; "
            f"caption_rate_hz {p('caption_rate_hz')}; serving {ASK_SERVICE} and {DESCRIBE_ACTION}"
        )
        self.worker.start()
        self.model.start()

    # -- parameters --------------------------------------------------------------------------------------
    def p(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _declare(self, spec: ParamSpec) -> None:
        try:
            self.declare_parameter(spec.name, spec.default, _descriptor(spec))
        except (InvalidParameterValueException, InvalidParameterTypeException) as exc:
            # A bad value from the YAML/command line must not kill the node: say so and use the default.
            self.get_logger().error(
                f"parameter {spec.name}: the given value was rejected ({exc}); using the default {spec.default!r}"
            )
            self.declare_parameter(spec.name, spec.default, _descriptor(spec), ignore_override=True)

    def _camera_list(self) -> list[str]:
        """image_topics, minus duplicates and invalid names (each named in an error line: a typo must not kill the
        node at launch)."""
        cameras = []
        for topic in dict.fromkeys(t.strip() for t in self.p("image_topics")):
            problem = self._topic_problem(topic)
            if problem:
                self.last_error = f"parameter image_topics: {topic!r} is not a valid topic name ({problem})"
                self.get_logger().error(f"{self.last_error}; ignoring it")
            else:
                cameras.append(topic)
        if not cameras:
            cameras = ["/camera/image_raw"]
            self.get_logger().error(f"parameter image_topics has no valid topic; using {cameras}")
        return cameras

    def _topic_problem(self, topic: str) -> str | None:
        try:
            validate_full_topic_name(expand_topic_name(topic, self.get_name(), self.get_namespace()))
        except (ValueError, InvalidTopicNameException) as exc:  # rcl raises ValueError, rclpy its own exception
            return str(exc).split(", at ")[0].splitlines()[0]
        if self.p("compressed") and not topic.endswith("/compressed"):
            return self._topic_problem(topic.rstrip("/") + "/compressed")
        return None

    def _prompt_problem(self, prompt: str, max_tokens: int) -> str | None:
        """Why the caption ``prompt`` parameter cannot be used (None: it can). The engine's prompt rule once the
        model is loaded; before that, only what needs no tokenizer (a megabyte prompt is refused either way)."""
        engine = self.model.engine
        try:
            if engine is not None:
                engine.check_prompt_length(prompt, max_tokens=max_tokens)
            elif len(prompt) > max_tokens * PROMPT_CHARS_PER_TOKEN_BOUND:
                return f"{len(prompt)} characters is more than max_question_tokens={max_tokens} tokens can hold"
        except IvlError as exc:
            return str(exc).replace("the question", "the prompt")
        return None

    def _validate_params(self, params: list) -> SetParametersResult:
        """Refuse a caption prompt over the prompt-length rule when it is set, instead of failing every caption."""
        values = {p.name: p.value for p in params}
        if "prompt" in values or "max_question_tokens" in values:
            prompt = str(values.get("prompt", self.p("prompt")))
            limit = int(values.get("max_question_tokens", self.p("max_question_tokens")))
            problem = self._prompt_problem(prompt, limit) if prompt else None
            if problem:
                return SetParametersResult(successful=False, reason=f"parameter prompt: {problem}")
        return SetParametersResult(successful=True)

    def _on_params_set(self, params: list) -> None:
        for param in params:
            self.get_logger().info(f"parameter {param.name} set to {param.value!r}")
        self.worker.wake()  # a new rate applies at once, not after the old period

    # -- model ---------------------------------------------------------------------------------------------
    def _load_engine(self) -> DelayedEngine:
        model_path = self.p("model_path") or str(default_model_path())
        notice = demo_notice(model_path)
        if notice:
            self.get_logger().info(notice)
        if not Path(model_path).exists():  # said before the slow torch import
            raise IvlError(f"model_path {model_path} does not exist")
        from ivl_ros.model.engine import VisionLanguageEngine  # deferred: torch import takes seconds

        # The node checks frames against its own (run-time) max_pixels parameter before the engine sees them.
        engine = VisionLanguageEngine.load(
            model_path,
            backend=self.p("backend"),
            device=self.p("device"),
            dtype=self.p("dtype"),
            engines_path=self.p("engines_path") or None,
            max_pixels=MAX_PIXELS_LIMIT,
        )
        return DelayedEngine(engine, lambda: float(self.p("debug_inference_delay_s")))

    def _on_model_ready(self, engine: Any, seconds: float) -> None:
        self.get_logger().info(f"model {engine.model_id} loaded in {seconds:.1f} s; ready")
        # The prompt from the YAML/command line was only checked without a tokenizer: check it now.
        prompt = self.p("prompt")
        problem = self._prompt_problem(prompt, int(self.p("max_question_tokens"))) if prompt else None
        if problem:
            self.last_error = f"parameter prompt: {problem}; using upstream's caption prompt"
            self.get_logger().error(self.last_error)
            self.set_parameters([Parameter("prompt", value="")])
        self.worker.wake()

    def _on_model_failed(self, message: str) -> None:
        self.get_logger().error(
            f"model failed to load: {message}. The node stays up; every request will "
            "report this error until the node is restarted with a working model_path"
        )

    # -- frames --------------------------------------------------------------------------------------------
    def _subscribe_cameras(self) -> CameraSubscriptions:
        compressed = self.p("compressed")
        msg_type, convert = (CompressedImage, compressed_to_rgb) if compressed else (Image, image_to_rgb)

        def topic_of(camera: str) -> str:
            if compressed and not camera.endswith("/compressed"):
                return camera.rstrip("/") + "/compressed"  # image_transport's naming
            return camera

        return CameraSubscriptions(
            self,
            self.cameras,
            msg_type,
            topic_of,
            self.p("image_reliability"),
            partial(self._on_frame, convert=convert),
        )

    def _on_frame(self, camera: str, msg: Any, convert: Any) -> None:
        try:
            rgb = convert(msg, int(self.p("max_pixels")))
        except FrameError as exc:
            self._reject(camera, str(exc))
            return
        except Exception as exc:
            self._reject(camera, f"unexpected {type(exc).__name__}: {exc}")
            return
        self.frames.put(camera, rgb, msg.header)
        self.worker.wake()

    def _reject(self, camera: str, reason: str) -> None:
        self.frames.reject(camera, reason)
        last = self._last_logged.get(camera)
        now = time.monotonic()
        if last is None or last[0] != reason or now - last[1] > LOG_REPEAT_S:
            self._last_logged[camera] = (reason, now)
            self.get_logger().warning(f"{camera}: frame rejected: {reason}")

    # -- captioning (inference thread) -------------------------------------------------------------------
    def _caption_due(self) -> float | None:
        rate = float(self.p("caption_rate_hz"))
        if self.model.state != "ready" or rate <= 0 or not self.frames.has_new():
            return None
        return self._last_caption_start + 1.0 / rate - time.monotonic()

    def _caption_settings(self) -> GenerationSettings:
        limit = int(self.p("max_new_tokens"))
        return CAPTION_SETTINGS.with_(
            max_new_tokens=min(CAPTION_SETTINGS.max_new_tokens, limit),
            min_new_tokens=min(CAPTION_SETTINGS.min_new_tokens, limit),
        )

    def _caption(self) -> None:
        frames = self.frames.take_new()
        if not frames:
            return
        self._last_caption_start = time.monotonic()
        engine = self.model.engine
        try:
            answers, call_ms = _timed(
                engine.caption_batch,
                [f.rgb for f in frames],
                max_tiles=int(self.p("max_tiles")),
                prompt=self.p("prompt") or None,
                settings=self._caption_settings(),
            )
        except IvlError as exc:
            self.last_error = f"caption: {exc}"
            self.get_logger().error(f"captioning {[f.camera for f in frames]} failed: {exc}")
            return
        if not self.context.ok():
            return  # Ctrl-C arrived during the model call: the publishers are gone
        debug = self.p("publish_debug_image")
        for frame, answer in zip(frames, answers, strict=True):
            msg = Caption(
                header=frame.header,
                camera=frame.camera,
                text=answer.answer,
                model_id=engine.model_id,
                tiles=answer.num_tiles,
                latency_ms=call_ms,
            )
            self.caption_pub.publish(msg)
            if debug:
                self.debug_pub.publish(
                    rgb_to_image(annotate(frame.rgb, answer.answer, frame.camera), header=frame.header)
                )
        self.counters["captions_published"] += len(frames)
        self.last_latency_ms = call_ms

    def _on_worker_error(self, what: str, exc: BaseException) -> None:
        if not self.context.ok():
            return  # shutting down: a publish racing the context shutdown is expected, not an error
        self.last_error = f"{what}: {type(exc).__name__}: {exc}"
        self.get_logger().error(f"{what} failed unexpectedly: {type(exc).__name__}: {exc}")

    # -- requests (Ask service, Describe action) ------------------------------------------------------------
    def _prepare(self, question: str, image: Any, camera: str, max_new_tokens: int) -> _Request:
        """Check a request on the executor thread; raises IvlError with the message for the caller."""
        reason = self.model.unavailable_reason()
        if reason:
            raise IvlError(reason)
        question = question.strip()
        if not question:
            raise IvlError("the question is empty")
        # The engine's prompt-length rule (megabytes are refused by their length before any tokenizing).
        self.model.engine.check_prompt_length(question, max_tokens=int(self.p("max_question_tokens")))
        if not 0 <= max_new_tokens <= MAX_REQUEST_TOKENS:
            raise IvlError(f"max_new_tokens must be 0 (node default) .. {MAX_REQUEST_TOKENS}, got {max_new_tokens}")
        settings = GenerationSettings(max_new_tokens=max_new_tokens or int(self.p("max_new_tokens")))
        if not is_empty(image):
            try:
                rgb = image_to_rgb(image, int(self.p("max_pixels")))
            except FrameError as exc:
                raise IvlError(f"the supplied image is unusable: {exc}") from None
            return _Request(rgb, question, settings, image.header.stamp, "supplied image")
        camera = camera.strip() or self.cameras[0]
        if camera not in self.cameras:
            raise IvlError(f"camera {camera!r} is not one of image_topics {self.cameras}")
        frame = self.frames.latest(camera)
        if frame is None:
            raise IvlError(f"no frame received yet on {camera}; publish a frame or supply an image")
        return _Request(frame.rgb, question, settings, frame.header.stamp, f"latest frame of {camera}")

    def _listed_clients(self, what: str) -> int:
        """Clients this node's graph lists that could take a ``what`` answer: action clients (each one subscribes
        to the feedback topic) or service clients. A graph query: cheap, but called at most every 0.25 s."""
        if what == DESCRIBE_ACTION:
            return self.count_subscribers(DESCRIBE_FEEDBACK_TOPIC)
        return self.count_clients(ASK_SERVICE)

    def _liveness_guard(self, what: str) -> Any:
        """-> check(): raises _Abandoned once the request is over request_timeout_s or its client has gone, so a
        vanished client never keeps the model busy. Called before the model call and at every generated token."""
        limit = float(self.p("request_timeout_s"))
        deadline = time.monotonic() + limit if limit > 0 else float("inf")
        next_graph_check = [0.0]
        # Gone means seen, then gone: a request can arrive before this node's graph lists its client (discovery
        # announces each endpoint on its own, and a fresh `ros2 action send_goal` sends at once), so "no client" at
        # the first looks is not proof of anything. A client that vanishes before it was ever listed is bounded by
        # request_timeout_s.
        seen = [False]

        def check() -> None:
            now = time.monotonic()
            if now > deadline:
                raise _Abandoned(f"stopped after request_timeout_s={limit:g} s")
            if now >= next_graph_check[0]:
                next_graph_check[0] = now + LIVENESS_CHECK_S
                if self._listed_clients(what) > 0:
                    seen[0] = True
                elif seen[0]:
                    raise _Abandoned("stopped: the client went away")

        return check

    async def _answer(
        self, what: str, question: str, image: Any, camera: str, max_new_tokens: int, on_text: Any = None
    ) -> Reply:
        try:
            req = self._prepare(question, image, camera, max_new_tokens)
        except IvlError as exc:
            return self._failed(what, str(exc))
        engine = self.model.engine
        done: Future = Future()
        check = self._liveness_guard(what)
        tokens = [0]

        def guarded(text: str) -> None:
            tokens[0] += 1
            try:
                check()
            except _Abandoned as exc:
                raise _Abandoned(f"{exc} ({tokens[0]} tokens generated)") from None
            if on_text is not None:
                on_text(text)

        def job() -> Any:
            check()  # abandoned while it waited for the model: skip it
            answer, call_ms = _timed(
                engine.ask,
                req.rgb,
                req.question,
                max_tiles=int(self.p("max_tiles")),
                settings=req.settings,
                on_text=guarded,
            )
            answer.latency_ms = call_ms
            return answer

        def finish(result: Any, error: BaseException | None) -> None:
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(result)

        self.worker.submit(job, finish)
        try:
            answer = await done
        except _Cancelled:
            return Reply(message="cancelled", image_stamp=req.stamp, cancelled=True)
        except _Abandoned as exc:
            return self._failed(what, str(exc))
        except IvlError as exc:
            return self._failed(what, str(exc))
        except Exception as exc:
            return self._failed(what, f"internal error: {type(exc).__name__}: {exc}")
        self.counters["requests_served"] += 1
        self.last_latency_ms = float(answer.latency_ms)
        return Reply(answer.answer, True, f"answered from the {req.source}", float(answer.latency_ms), req.stamp)

    def _failed(self, what: str, message: str) -> Reply:
        self.counters["requests_failed"] += 1
        self.get_logger().warning(f"{what}: {message}")
        return Reply(message=message)

    async def _on_ask(self, request: Ask.Request, response: Ask.Response) -> Ask.Response:
        reply = await self._answer(ASK_SERVICE, request.question, request.image, request.camera, request.max_new_tokens)
        response.answer, response.success, response.message = reply.answer, reply.success, reply.message
        response.latency_ms = reply.latency_ms
        response.image_stamp = reply.image_stamp or Time()
        return response

    async def _on_describe(self, goal_handle: Any) -> Describe.Result:
        goal = goal_handle.request
        count = 0

        def on_text(text: str) -> None:
            nonlocal count
            if goal_handle.is_cancel_requested:
                raise _Cancelled  # stops generation: the engine releases its lock on the way out
            count += 1
            goal_handle.publish_feedback(Describe.Feedback(partial_text=text, tokens=count))

        reply = await self._answer(
            DESCRIBE_ACTION, goal.question, goal.image, goal.camera, goal.max_new_tokens, on_text
        )
        result = Describe.Result(
            answer=reply.answer,
            success=reply.success,
            message=reply.message,
            latency_ms=reply.latency_ms,
            image_stamp=reply.image_stamp or Time(),
        )
        if reply.cancelled:
            goal_handle.canceled()
        elif reply.success:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return result

    # -- diagnostics -----------------------------------------------------------------------------------------
    def _diagnostics_publisher(self) -> Any:
        try:
            from diagnostic_msgs.msg import DiagnosticArray
        except ImportError:
            self.get_logger().warning(
                "diagnostic_msgs is not installed (pip install ros-diagnostic-msgs); no /diagnostics"
            )
            return None
        pub = self.create_publisher(DiagnosticArray, "/diagnostics", QoSProfile(depth=10))
        self.create_timer(1.0, self._publish_diagnostics, callback_group=self._diag_group)
        return pub

    def health(self) -> list[diagnostics.Status]:
        cams = self.frames.stats()
        engine = self.model.engine
        info = {
            "model_id": engine.model_id if engine is not None else "",
            "model_path": self.p("model_path"),
            "backend": self.p("backend"),
            "device": self.p("device"),
            "dtype": self.p("dtype"),
            "load_seconds": f"{self.model.load_seconds:.2f}",
            "last_latency_ms": f"{self.last_latency_ms:.1f}",
            "frames_received": sum(s.received for s in cams.values()),
            "frames_dropped": sum(s.dropped for s in cams.values()),
            "frames_rejected": sum(s.rejected for s in cams.values()),
            "pending_requests": self.worker.pending,
            "ask_clients": self._listed_clients(ASK_SERVICE),
            "describe_clients": self._listed_clients(DESCRIBE_ACTION),
            "last_error": self.last_error,
            **self.counters,
        }
        return [
            diagnostics.model_status(NODE_NAME, self.model.state, self.model.error, info),
            *diagnostics.camera_statuses(NODE_NAME, cams, extra=self.camera_subs.describe()),
        ]

    def _publish_diagnostics(self) -> None:
        self._diag_pub.publish(diagnostics.to_msg(self.health(), self.get_clock().now().to_msg()))

    def close(self) -> None:
        self.worker.stop(timeout=2.0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ivl-captioner`` / ``python -m ivl_ros.node.captioner [--ros-args ...]``."""
    # This process receives camera frames: pick a DDS transport that takes them whole from default-configured
    # publishers (keeps the user's explicit choice). Must happen before the participant exists.
    transport = configure_process(SUBSCRIBER)
    rclpy.init(args=sys.argv if argv is None else argv)
    node = None
    try:
        node = CaptionNode()
        node.get_logger().info(transport)
        warning = receive_buffer_warning()
        if warning:
            node.get_logger().warning(warning)
        executor = MultiThreadedExecutor(num_threads=4)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # Ctrl-C / SIGTERM: rclpy's handler already shut the context down; exit cleanly
    finally:
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
