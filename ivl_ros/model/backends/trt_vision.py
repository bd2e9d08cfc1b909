"""The vision engine in TensorRT (``tensorrt`` or ``tensorrt_rtx``, one code path), CUDA through ctypes.

No torch and no cuda-python: device memory and copies go through the CUDA driver API (libcuda.so.1)
with ctypes, which is all an engine with one input and one output needs.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from types import ModuleType

import numpy as np

from ivl_ros.model.backends.engines import (
    TENSORRT_INSTALL_HINT,
    EngineMismatchError,
    TensorRTUnavailableError,
)

TRT_MODULES = ("tensorrt", "tensorrt_rtx")


def import_tensorrt(choice: str = "auto") -> tuple[str, ModuleType]:
    """(module name, module) for ``auto`` (tensorrt first: Jetson/data-centre, then tensorrt_rtx) or a named one."""
    names = TRT_MODULES if choice == "auto" else (choice,)
    errors = []
    for name in names:
        if name not in TRT_MODULES:
            raise TensorRTUnavailableError(f"TensorRT flavour {name!r} is not one of {('auto', *TRT_MODULES)}")
        try:
            module = __import__(name)
            # tensorrt_rtx re-exports its bindings; a half-installed wheel imports but has no Builder.
            if not hasattr(module, "Builder"):
                raise ImportError(f"{name} has no Builder (incomplete install)")
            return name, module
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise TensorRTUnavailableError(
        f"no TensorRT Python package can be imported ({'; '.join(errors)}); " + TENSORRT_INSTALL_HINT
    )


class CudaDriver:
    """The handful of CUDA driver calls the engine runner needs."""

    def __init__(self, device: int = 0) -> None:
        try:
            self.lib = ctypes.CDLL("libcuda.so.1")
        except OSError:
            raise TensorRTUnavailableError(
                "no NVIDIA driver (libcuda.so.1) on this machine: a TensorRT engine needs a GPU; use --backend onnx"
            ) from None
        self._check(self.lib.cuInit(0), "cuInit")
        count = ctypes.c_int()
        self._check(self.lib.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
        if device >= count.value:
            raise TensorRTUnavailableError(f"CUDA device {device} requested but {count.value} GPU(s) are visible")
        self.device = ctypes.c_int()
        self._check(self.lib.cuDeviceGet(ctypes.byref(self.device), device), "cuDeviceGet")
        self.context = ctypes.c_void_p()
        self._check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(self.context), self.device), "cuCtxRetain")
        self._check(self.lib.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")
        self.stream = ctypes.c_void_p()
        self._check(self.lib.cuStreamCreate(ctypes.byref(self.stream), 0), "cuStreamCreate")

    @staticmethod
    def _check(code: int, what: str) -> None:
        if code != 0:
            raise TensorRTUnavailableError(f"CUDA driver call {what} failed with error {code}")

    def compute_capability(self) -> tuple[int, int]:
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.cuDeviceGetAttribute(ctypes.byref(major), 75, self.device), "cuDeviceGetAttribute")
        self._check(self.lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, self.device), "cuDeviceGetAttribute")
        return major.value, minor.value

    def name(self) -> str:
        buf = ctypes.create_string_buffer(256)
        self._check(self.lib.cuDeviceGetName(buf, 256, self.device), "cuDeviceGetName")
        return buf.value.decode(errors="replace")

    def alloc(self, nbytes: int) -> int:
        ptr = ctypes.c_uint64()
        self._check(self.lib.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), "cuMemAlloc")
        return ptr.value

    def free(self, ptr: int) -> None:
        self.lib.cuMemFree_v2(ctypes.c_uint64(ptr))

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        self._check(
            self.lib.cuMemcpyHtoD_v2(
                ctypes.c_uint64(ptr), array.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(array.nbytes)
            ),
            "cuMemcpyHtoD",
        )

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        self._check(
            self.lib.cuMemcpyDtoH_v2(
                array.ctypes.data_as(ctypes.c_void_p), ctypes.c_uint64(ptr), ctypes.c_size_t(array.nbytes)
            ),
            "cuMemcpyDtoH",
        )

    def synchronize(self) -> None:
        self._check(self.lib.cuStreamSynchronize(self.stream), "cuStreamSynchronize")


def check_architecture(built_for: list[str], actual: tuple[int, int], gpu: str, engine: Path) -> None:
    """Refuse an engine whose recorded targets do not include this GPU (TensorRT-RTX has no SM90 target)."""
    sm = f"SM{actual[0]}{actual[1]}"
    if built_for and sm not in built_for:
        raise EngineMismatchError(
            f"{engine}: built for {', '.join(built_for)}, but this GPU ({gpu}) is {sm}; rebuild the engines on "
            "this machine (`--trt tensorrt` where NVIDIA's TensorRT is installed), or use --backend onnx"
        )


class TrtVision:
    """Runs a serialized vision engine: one float32 input (tiles, 3, S, S), one float32 output."""

    def __init__(self, engine_path: Path, info: dict, max_batch: int, device: str = "cpu") -> None:
        wanted = info.get("module", "auto")
        name, trt = import_tensorrt(wanted if wanted in TRT_MODULES else "auto")
        if name != info.get("module"):
            raise EngineMismatchError(
                f"{engine_path}: built with {info.get('module')}, but only {name} can be "
                "imported here; rebuild the engines with this TensorRT"
            )
        self.cuda = CudaDriver(int(device.split(":", 1)[1]) if ":" in device else 0)
        check_architecture(
            info.get("compute_capabilities", []), self.cuda.compute_capability(), self.cuda.name(), engine_path
        )
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise EngineMismatchError(
                f"{engine_path}: {name} could not deserialize the engine (built by another "
                "TensorRT version or for another GPU); rebuild it on this machine"
            )
        self.context = self.engine.create_execution_context()
        self.input, self.output = info["input"], info["output"]
        self.max_batch = max_batch
        self.out_tail = tuple(int(d) for d in info["output_shape_tail"])

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        pv = np.ascontiguousarray(pixel_values, dtype=np.float32)
        out = np.empty((pv.shape[0], *self.out_tail), dtype=np.float32)
        d_in, d_out = self.cuda.alloc(pv.nbytes), self.cuda.alloc(out.nbytes)
        try:
            self.cuda.to_device(d_in, pv)
            self.context.set_input_shape(self.input, tuple(pv.shape))
            self.context.set_tensor_address(self.input, d_in)
            self.context.set_tensor_address(self.output, d_out)
            if not self.context.execute_async_v3(self.cuda.stream.value or 0):
                raise EngineMismatchError("TensorRT failed to run the vision engine (see the log above)")
            self.cuda.synchronize()
            self.cuda.to_host(out, d_out)
        finally:
            self.cuda.free(d_in)
            self.cuda.free(d_out)
        return out
