"""The GPU export on ONNX Runtime's CUDA provider: build on the GPU, every node on CUDA, CUDA-graph replay,
device-resident vision input, quantised and bf16 decoders. Skipped without onnxruntime-gpu and a GPU.

Run on a GPU machine: ``pytest -m gpu tests/export/test_onnx_cuda.py -s``.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ivl_ros.model.engine import GenerationSettings, VisionLanguageEngine
from tests.export.conftest import AGREEMENT_QUESTIONS, build, copy_engines, token_agreement

pytestmark = pytest.mark.gpu
SETTINGS = GenerationSettings(max_new_tokens=24)


def _require_cuda() -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDA provider (needs onnxruntime-gpu and an NVIDIA GPU)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device (the GPU build exports on it)")


@pytest.fixture(scope="module")
def cuda_engines(tiny_checkpoint, tmp_path_factory):
    _require_cuda()
    out = tmp_path_factory.mktemp("cuda") / "fp16"
    build(tiny_checkpoint, out, "--precision", "fp16", "--device", "cuda", "--trt", "off")
    return out


def _engine(checkpoint, engines):
    return VisionLanguageEngine.load(checkpoint, backend="onnx", engines_path=engines, device="cuda")


def _cases(sample_frame):
    for image in (sample_frame, sample_frame[:100, :250], sample_frame[::-1, ::-1], None):
        for question in AGREEMENT_QUESTIONS:
            yield image, question


def _agreement(engine, ref_engine, sample_frame) -> tuple[int, int, int, int]:
    return token_agreement(engine, ref_engine, sample_frame, SETTINGS)


def test_cuda_build_checks_and_every_node_on_cuda(cuda_engines):
    from ivl_ros.model.backends.onnx_backend import make_session

    manifest = json.loads((cuda_engines / "manifest.json").read_text())
    vision, decoder = manifest["stages"]["vision_onnx"], manifest["stages"]["decoder_onnx"]
    print(f"\nCUDA build checks: vision {vision['check']}; decoder {decoder['check']}")
    assert vision["check"]["provider"] == decoder["check"]["provider"] == "CUDAExecutionProvider"
    assert vision["check"]["max_abs_diff"] < 1e-2 * vision["check"]["max_abs_value"]
    assert decoder["check"]["top1_agreement"] >= 0.9
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    # The decoder must run wholly on CUDA (CUDA graphs need it): this session refuses any node on the CPU provider.
    make_session(cuda_engines / "decoder.onnx", providers, "cuda", cpu_fallback=False)
    try:  # the vision graph's few shape nodes (class token) may sit on the CPU; reported, not required
        make_session(cuda_engines / "vision.onnx", providers, "cuda", cpu_fallback=False)
        print("vision graph: every node on CUDA")
    except Exception as exc:
        print(f"vision graph: not every node on CUDA ({str(exc)[:300]})")


def test_cuda_tokens_agree_with_torch_and_with_the_cpu_provider(
    tiny_checkpoint, tiny_engine, cuda_engines, sample_frame
):
    cuda = _engine(tiny_checkpoint, cuda_engines)
    cpu = VisionLanguageEngine.load(tiny_checkpoint, backend="onnx", engines_path=cuda_engines, device="cpu")
    same_t, cases, prefix_t, total = _agreement(cuda, tiny_engine, sample_frame)
    same_c, _, prefix_c, total_c = _agreement(cuda, cpu, sample_frame)
    print(
        f"\nfp16 on CUDA vs torch fp32 (CPU): {same_t}/{cases} identical, prefix {prefix_t}/{total}; "
        f"vs the same graph on the CPU provider: {same_c}/{cases}, prefix {prefix_c}/{total_c}"
    )
    assert same_t >= cases // 2 and prefix_t >= 0.6 * total
    assert same_c >= cases // 2


def test_cuda_graph_replay_gives_the_plain_run_tokens(tiny_checkpoint, cuda_engines, sample_frame, monkeypatch):
    graphs = _engine(tiny_checkpoint, cuda_engines)
    monkeypatch.setenv("IVL_ORT_CUDA_GRAPH", "0")
    plain = _engine(tiny_checkpoint, cuda_engines)
    assert graphs.backend.decoder.cuda_graphs and not plain.backend.decoder.cuda_graphs
    for _ in range(2):  # the second round replays graphs captured in the first
        for image, question in _cases(sample_frame):
            assert (
                graphs.ask(image, question, settings=SETTINGS).token_ids
                == plain.ask(image, question, settings=SETTINGS).token_ids
            )
    images = [sample_frame, None, sample_frame[:100, :250]]
    questions = ["Describe the room.", "Hi", "Is there a chair?"]
    for _ in range(2):
        assert [a.token_ids for a in graphs.ask_batch(images, questions, settings=SETTINGS)] == [
            a.token_ids for a in plain.ask_batch(images, questions, settings=SETTINGS)
        ]
    assert all(st.graph_id is not None for st in graphs.backend.decoder.states.values())


def test_vision_takes_tiles_already_on_the_gpu(tiny_checkpoint, cuda_engines):
    import torch

    engine = _engine(tiny_checkpoint, cuda_engines)
    tiles = torch.from_numpy(np.random.default_rng(1).uniform(-2, 2.5, (3, 3, 112, 112)).astype(np.float32))
    on_device = engine.backend.image_features(tiles.cuda())
    assert on_device.device_name().lower() == "cuda"
    host = engine.backend.image_features(tiles.numpy())
    assert np.array_equal(on_device.numpy(), host)


@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_quantized_decoders_run_on_cuda_with_graphs(
    mode, tiny_checkpoint, cuda_engines, tmp_path, sample_frame, monkeypatch
):
    out = copy_engines(cuda_engines, tmp_path / mode)
    manifest = build(
        tiny_checkpoint, out, "--precision", "fp16", "--device", "cuda", "--trt", "off", "--llm-quant", mode
    )
    quant = manifest["stages"]["decoder_quant"]
    float_engine = _engine(tiny_checkpoint, cuda_engines)
    graphs = _engine(tiny_checkpoint, out)
    monkeypatch.setenv("IVL_ORT_CUDA_GRAPH", "0")
    plain = _engine(tiny_checkpoint, out)
    same, cases, prefix, total = _agreement(graphs, float_engine, sample_frame)
    print(
        f"\n{mode} on CUDA: size x{quant['size']['ratio']:.2f}, vs fp16: {same}/{cases} identical, prefix "
        f"{prefix}/{total}; build check {quant['accuracy']}"
    )
    for image, question in _cases(sample_frame):
        assert (
            graphs.ask(image, question, settings=SETTINGS).token_ids
            == plain.ask(image, question, settings=SETTINGS).token_ids
        )
    session = graphs.backend.decoder.session
    assert session.get_providers()[0] == "CUDAExecutionProvider"


def test_bf16_build_and_run_on_cuda(tiny_checkpoint, tiny_engine, cuda_engines, tmp_path_factory, sample_frame):
    out = tmp_path_factory.mktemp("cuda") / "bf16"
    manifest = build(tiny_checkpoint, out, "--precision", "bf16", "--device", "cuda", "--trt", "off")
    vision, decoder = manifest["stages"]["vision_onnx"], manifest["stages"]["decoder_onnx"]
    print(f"\nbf16 CUDA build checks: vision {vision['check']}; decoder {decoder['check']}")
    assert vision["check"]["max_abs_diff"] < 3e-2 * vision["check"]["max_abs_value"]
    assert decoder["check"]["top1_agreement"] >= 0.8
    bf16 = _engine(tiny_checkpoint, out)
    same_t, cases, prefix_t, total = _agreement(bf16, tiny_engine, sample_frame)
    same_h, _, prefix_h, _ = _agreement(bf16, _engine(tiny_checkpoint, cuda_engines), sample_frame)
    print(
        f"bf16 on CUDA vs torch fp32: {same_t}/{cases} identical, prefix {prefix_t}/{total}; vs fp16 on CUDA: "
        f"{same_h}/{cases}, prefix {prefix_h}/{total}"
    )
    assert prefix_t >= 0.3 * total
    shutil.rmtree(out)
