"""TensorRT engine for the vision ONNX: one builder code path for ``tensorrt`` and ``tensorrt_rtx``.

Both expose the same builder API; the differences handled here are small:
* networks are created STRONGLY_TYPED in both (the only flag TensorRT-RTX has), so the precision is
  the one in the ONNX graph and no FP16/BF16 builder flags are needed;
* TensorRT-RTX builds ahead of time without a GPU for explicit compute capabilities (it has no SM90,
  so no H100/H200 target); NVIDIA's TensorRT builds for the GPU it runs on.
The parser reads from the file path, because the ONNX keeps its weights in external data.
"""

from __future__ import annotations

import time
from pathlib import Path

from ivl_ros.model.backends.trt_vision import CudaDriver, import_tensorrt

# TensorRT-RTX's ahead-of-time targets (Ampere, Ampere RTX, Ada, Blackwell RTX), named as its enum.
RTX_TARGETS = ("SM80", "SM86", "SM89", "SM120")


class TensorRTBuildError(RuntimeError):
    pass


def _current_sm() -> str:
    major, minor = CudaDriver().compute_capability()
    return f"SM{major}{minor}"


def build_vision_engine(
    onnx_path: Path,
    engine_path: Path,
    cache_path: Path,
    choice: str,
    tiles: tuple[int, int, int],
    tile_size: int,
    input_name: str,
    output_name: str,
) -> dict:
    module_name, trt = import_tensorrt(choice)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTBuildError(f"{module_name} could not parse {onnx_path}: {'; '.join(errors[:3])}")
    config = builder.create_builder_config()
    if module_name == "tensorrt_rtx":
        targets = list(RTX_TARGETS)
        config.num_compute_capabilities = len(targets)
        for i, sm in enumerate(targets):
            config.set_compute_capability(getattr(trt.ComputeCapability, sm), i)
    else:
        targets = [_current_sm()]
    profile = builder.create_optimization_profile()
    shape = lambda n: (n, 3, tile_size, tile_size)  # noqa: E731
    profile.set_shape(input_name, shape(tiles[0]), shape(tiles[1]), shape(tiles[2]))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=True)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError(f"{module_name} failed to build an engine from {onnx_path} (see the log above)")
    build_s = time.perf_counter() - start
    engine_path.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    out_shape = list(network.get_output(0).shape)
    return {
        "module": module_name,
        "version": trt.__version__,
        "compute_capabilities": targets,
        "profile": {"input": input_name, "min": tiles[0], "opt": tiles[1], "max": tiles[2]},
        "input": input_name,
        "output": output_name,
        "output_shape_tail": [int(d) for d in out_shape[1:]],
        "layers": network.num_layers,
        "build_seconds": round(build_s, 2),
        "engine_bytes": engine_path.stat().st_size,
    }
