"""The kernel classifier behind the profiler listings (benchmarks/profiling.py) and the TTFT breakdown's CPU skip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.profiling import CLASS_LABELS, kernel_class

# Names as the H200 runs printed them (cuBLAS, cuDNN, ATen, Inductor, Triton decode kernels, CUPTI's copies).
REAL_KERNELS = [
    ("nvjet_sm90_tst_192x208_64x4_1x2_h_bz_coopB_TNT", "matmul"),
    (
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128_4x1x1_cga1x1x1_kernel0_0",
        "attention",
    ),
    (
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>, "
        "std::array<char*, 3ul> >(int, at::native::CUDAFunctor_add<c10::BFloat16>, std::array<char*, 3ul>)",
        "elementwise/norm",
    ),
    ("triton_poi_fused_add_mul_0", "elementwise/norm"),
    ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_1", "elementwise/norm"),  # not "copy": Inductor's name
    ("triton_tem_fused_addmm_2", "matmul"),
    (
        "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)"
        "::{lambda()#3}::operator()() const::{lambda()#7}::operator()() const::{lambda(c10::BFloat16)#1}, "
        "std::array<char*, 2ul>, 4, TrivialOffsetCalculator<1, unsigned int>>",
        "copy",
    ),
    ("Memcpy HtoD (Pageable -> Device)", "copy"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off", "matmul"),
    ("attention_kernel", "attention"),
    ("matvec_residual_kernel", "matmul"),
    ("choose_kernel", "other"),
]


@pytest.mark.parametrize("name,expected", REAL_KERNELS)
def test_kernel_class_of_real_kernel_names(name, expected):
    assert kernel_class(name) == expected
    assert expected in CLASS_LABELS


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path only")
def test_ttft_profile_skips_without_cuda(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.ttft_profile", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],  # the repository root: benchmarks is a top-level package
    )
    assert done.returncode == 0, done.stderr
    assert "TTFT breakdown skipped: no CUDA" in done.stdout
    assert not any(tmp_path.iterdir())
