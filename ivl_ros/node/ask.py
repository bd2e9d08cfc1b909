"""``ivl-ros-ask "question"``: ask the running captioner about its latest frame (or an image file).

Uses the ``/ivl/ask`` service, or with ``--stream`` the ``/ivl/describe`` action, printing the answer as it
is generated. Exit codes: 0 answered, 1 the node refused (its message is printed), 2 no node / timeout.
"""

from __future__ import annotations

import argparse
import json
import sys


def _image_msg(path: str):
    import numpy as np
    from PIL import Image as PILImage

    from ivl_ros.node.image_msgs import rgb_to_image

    with PILImage.open(path) as img:
        return rgb_to_image(np.asarray(img.convert("RGB")), "rgb8")


def _wait(executor, future, timeout: float):
    # Spin on this thread (no background spinner): exits are then clean, with nothing left in a DDS wait.
    executor.spin_until_future_complete(future, timeout_sec=timeout)
    if not future.done():
        raise TimeoutError
    return future.result()


def ask(
    question: str,
    camera: str = "",
    image: str | None = None,
    max_new_tokens: int = 0,
    stream: bool = False,
    timeout: float = 60.0,
    as_json: bool = False,
) -> int:
    import rclpy
    from rclpy.action import ActionClient
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    from ivl_interfaces.action import Describe
    from ivl_interfaces.srv import Ask

    rclpy.init()
    node = Node("ivl_ros_ask")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        shown = [""]  # streamed text printed so far
        fields = {"question": question, "camera": camera, "max_new_tokens": max_new_tokens}
        if image:
            try:
                fields["image"] = _image_msg(image)
            except OSError as exc:
                print(f"ivl-ros-ask: cannot read {image}: {exc}", file=sys.stderr)
                return 2
        if stream:
            client = ActionClient(node, Describe, "/ivl/describe")
            if not client.wait_for_server(timeout_sec=min(timeout, 10.0)):
                print(
                    "ivl-ros-ask: /ivl/describe is not available (is ivl_captioner running, same ROS_DOMAIN_ID?)",
                    file=sys.stderr,
                )
                return 2

            def on_feedback(msg) -> None:
                text = msg.feedback.partial_text
                # Partial text only grows, except that a multi-byte character may complete late: then
                # start the line again.
                if not as_json:
                    delta = text[len(shown[0]) :] if text.startswith(shown[0]) else "\r" + text
                    sys.stdout.write(delta)
                    sys.stdout.flush()
                shown[0] = text

            handle = _wait(
                executor, client.send_goal_async(Describe.Goal(**fields), feedback_callback=on_feedback), timeout
            )
            result = _wait(executor, handle.get_result_async(), timeout).result
        else:
            client = node.create_client(Ask, "/ivl/ask")
            if not client.wait_for_service(timeout_sec=min(timeout, 10.0)):
                print(
                    "ivl-ros-ask: /ivl/ask is not available (is ivl_captioner running, same ROS_DOMAIN_ID?)",
                    file=sys.stderr,
                )
                return 2
            result = _wait(executor, client.call_async(Ask.Request(**fields)), timeout)
        if as_json:
            print(
                json.dumps(
                    {
                        "answer": result.answer,
                        "success": result.success,
                        "message": result.message,
                        "latency_ms": result.latency_ms,
                    }
                )
            )
        elif result.success:
            if not stream:
                print(result.answer)
            else:  # the streamed text is on screen already; finish the line (rewrite it if it differs)
                print("" if shown[0] == result.answer else "\r" + result.answer)
        if not result.success:
            print(f"ivl-ros-ask: {result.message}", file=sys.stderr)
            return 1
        return 0
    except TimeoutError:
        print(f"ivl-ros-ask: no answer within {timeout} s", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception:
        if rclpy.ok():
            raise
        return 130  # Ctrl-C: rclpy's handler shut the context down first, so the wait in progress failed
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ivl-ros-ask", description=__doc__.splitlines()[0])
    parser.add_argument("question")
    parser.add_argument("--camera", default="", help="image topic whose latest frame to use (default: the first)")
    parser.add_argument("--image", help="ask about this image file instead of a camera frame")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="0: the node's max_new_tokens")
    parser.add_argument("--stream", action="store_true", help="print the answer while it is generated (action)")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--json", action="store_true", help="print the response as JSON")
    ns = parser.parse_args(argv)
    return ask(ns.question, ns.camera, ns.image, ns.max_new_tokens, ns.stream, ns.timeout, ns.json)


if __name__ == "__main__":
    sys.exit(main())
