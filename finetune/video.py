"""Video samples: decode a video file with OpenCV and pick frames the way upstream's training data does.

Upstream (internvl_chat ``read_frames_decord`` / ``read_frames_folder`` + ``get_frame_indices``): each time a
video sample is built, a frame count is drawn uniformly from ``[min_num_frames, max_num_frames]``; the video is
cut into that many equal intervals (``linspace(0, n_frames, count + 1)`` truncated to int) and one frame is taken
per interval, at random (``rand``) or in its middle (``middle``). A video shorter than the count repeats its last
chosen frame up to the count; a frame folder with no more frames than the count keeps them all. Each frame then
becomes one 448x448 tile (no dynamic tiling) behind a ``Frame{i}: <image>`` line of the prompt.

Randomness comes from the ``random.Random`` the caller passes (a function of seed, epoch and sample), never from
a global generator, so a resumed run picks the same frames.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ivl_ros.errors import IvlError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
SAMPLING_METHODS = ("rand", "middle")
INSTALL_HINT = "video files need OpenCV: pip install -r requirements/finetune.txt (opencv-python-headless)"


class VideoError(IvlError):
    """A video file cannot be decoded (or holds no frame)."""


@dataclass(frozen=True)
class FrameSampling:
    """Upstream's video settings (internvl_chat_finetune.py: min_num_frame 8, max_num_frame 32, 'rand')."""

    min_frames: int = 8
    max_frames: int = 32
    method: str = "rand"

    def __post_init__(self) -> None:
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError(f"frame bounds must satisfy 1 <= min ({self.min_frames}) <= max ({self.max_frames})")
        if self.method not in SAMPLING_METHODS:
            raise ValueError(f"video sampling {self.method!r} is not one of {SAMPLING_METHODS}")

    def frame_count(self, rng: random.Random | None) -> int:
        """How many frames this build of the sample uses (``max_frames`` when there is no RNG)."""
        return self.max_frames if rng is None else rng.randint(self.min_frames, self.max_frames)


def frame_indices(count: int, n_frames: int, method: str, rng: random.Random | None) -> list[int]:
    """``count`` frame numbers out of ``n_frames``: one per equal interval, padded with the last one.

    ``rand`` draws from each interval's ``range(start, end)`` where ``end`` is the next interval's start minus
    one (upstream's bounds, which never pick an interval's last frame); when an interval is too short for that,
    upstream falls back to a sorted random subset of all frames, as here. Without an RNG ``rand`` acts as
    ``middle``.
    """
    if n_frames < 1 or count < 1:
        raise ValueError(f"cannot pick {count} of {n_frames} frames")
    taken = min(count, n_frames)
    edges = np.linspace(0, n_frames, taken + 1).astype(int)
    ranges = [(int(edges[i]), int(edges[i + 1]) - 1) for i in range(taken)]
    if method == "rand" and rng is not None:
        if all(end > start for start, end in ranges):
            picked = [rng.randrange(start, end) for start, end in ranges]
        else:
            picked = sorted(rng.sample(range(n_frames), taken))
    else:
        picked = [(start + end) // 2 for start, end in ranges]
    return picked + [picked[-1]] * (count - taken)


def sample_frame_files(frames: list[Path], sampling: FrameSampling, rng: random.Random | None) -> list[Path]:
    """A frame folder's files for one build: all of them unless there are more than the drawn count."""
    count = sampling.frame_count(rng)
    if len(frames) <= count:
        return list(frames)
    return [frames[i] for i in frame_indices(count, len(frames), sampling.method, rng)]


def _cv2():
    try:
        import cv2
    except ImportError:
        raise VideoError(INSTALL_HINT) from None
    return cv2


def opencv_problem() -> str | None:
    """Why video files cannot be decoded here (OpenCV missing), or None."""
    try:
        _cv2()
    except VideoError as exc:
        return str(exc)
    return None


def _open(path: Path, shown: str | None = None):
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise VideoError(f"cannot read video {shown or path} (OpenCV cannot open it: not a video, or a codec it lacks)")
    return cap


def count_frames(path: Path) -> int:
    """The number of decodable frames (counted by decoding when the container does not say)."""
    cv2 = _cv2()
    cap = _open(path)
    try:
        stated = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if stated > 0:
            return stated
        n = 0
        while cap.grab():
            n += 1
        return n
    finally:
        cap.release()


def probe_video(path: Path, shown: str | None = None) -> str | None:
    """--check-data: a problem with this video file (cannot open, no frame, first frame undecodable) or None."""
    shown = shown or str(path)
    try:
        cv2 = _cv2()
        cap = _open(path, shown)
    except VideoError as exc:
        return str(exc)
    try:
        stated = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        ok, frame = cap.read()
        if not ok or frame is None:
            return (
                f"video has no frames: {shown}"
                if stated <= 0
                else f"cannot read video {shown} (the container lists {stated} frames but the first does not decode)"
            )
    finally:
        cap.release()
    return None


def read_video_frames(path: Path, sampling: FrameSampling, rng: random.Random | None) -> list[Image.Image]:
    """Decode the frames upstream would sample from ``path``, as RGB images, in order.

    Frames are read sequentially (grab, and retrieve only the chosen ones): seeking by frame number is not exact
    in every container. If the container overstates its length, chosen frames past the real end are replaced by
    the last decoded frame (upstream's padding rule).
    """
    cv2 = _cv2()
    n_frames = count_frames(path)
    if n_frames < 1:
        raise VideoError(f"video has no frames: {path}")
    wanted = frame_indices(sampling.frame_count(rng), n_frames, sampling.method, rng)
    needed = sorted(set(wanted))
    decoded: dict[int, np.ndarray] = {}
    cap = _open(path)
    try:
        index, last = 0, None
        for target in needed:
            while index <= target and cap.grab():
                if index == target:
                    ok, frame = cap.retrieve()
                    if ok and frame is not None:
                        decoded[target] = last = frame
                index += 1
            if index <= target:  # the stream ended early
                break
    finally:
        cap.release()
    if last is None:
        raise VideoError(f"cannot read video {path} (no frame decodes)")
    frames = []
    for i in wanted:
        bgr = decoded.get(i)
        if bgr is None:
            bgr = decoded[max(k for k in decoded if k <= i)] if any(k <= i for k in decoded) else last
        frames.append(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    return frames
