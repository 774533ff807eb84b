"""Small helpers that training and using a model share: seeding, logging, device and precision settings, and the
environment a run records. It imports nothing of either, nor transformers' training modules."""
import contextlib
import ctypes
import functools
import logging
import platform
import random
import time

import numpy as np
import torch
import transformers

log = logging.getLogger(__name__)


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def setup_logging():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    # transformers' own progress bars and notices would interleave with ours
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def use_bf16(device):
    """bf16 only on CPUs that do bf16 natively and faster than fp32.

    Emulated bf16 is slower than fp32, and native is not always faster: an AMD
    EPYC with AVX512-BF16 ran 2048x2048 matmuls at 416 GFLOP/s in bf16 against
    179 in fp32, an Intel Xeon with AVX512-BF16 but no AMX at 159 against 269
    (autocast made its steps 1.34x slower), so the CPU is asked by a timing.
    Not on a GPU: a step of 16 short utterances there is bound by kernel
    launches, not by matmuls, and autocast's extra cast kernels made steps 3-4x
    slower (bench/speed.py on an H200); the GPU fast path uses TF32 instead.
    """
    return device.type == "cpu" and torch.cpu._is_avx512_bf16_supported() and bf16_matmul_speedup() >= BF16_PAYS


BF16_PAYS = 1.2  # the two CPUs above sit at 2.3x and 0.6x; a margin keeps a timing under load from flipping it


@functools.cache
def bf16_matmul_speedup(n=768, reps=2, tries=5):
    """fp32 time over bf16 time of n x n matmuls, each the best of `tries`, taken in turns so that another process's
    burst slows both alike: 0.2-0.4 s, once per process."""
    # constant matrices, not random ones: a run's seeded random stream stays untouched
    matrices = [torch.full((n, n), 0.5, dtype=dtype) for dtype in (torch.float32, torch.bfloat16)]
    best = [float("inf")] * 2
    for a in matrices:
        a @ a
    for _ in range(tries):
        for i, a in enumerate(matrices):
            t = time.perf_counter()
            for _ in range(reps):
                a @ a
            best[i] = min(best[i], time.perf_counter() - t)
    return best[0] / best[1]


def autocast(device, enabled):
    """bf16 autocast on device when enabled, else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def cpu_attention(device, fast):
    """The attention kernel for the fast path: on CPU, plain matmul attention; elsewhere transformers' choice (SDPA).

    On short utterances the backward of SDPA's CPU flash kernel costs more than
    all the linear layers of a step; eager attention is the same equation.
    """
    return "eager" if fast and device.type == "cpu" else None


def keep_freed_memory():
    """Make glibc keep freed memory in the heap instead of returning it to the OS.

    The dense gradient of the word embeddings (30522 x 384 floats for MiniLM) is
    allocated anew at every step; glibc serves such large blocks with mmap and
    unmaps them on free, so every step page-faults ~47 MB of fresh zeroed pages.
    Returns False where this is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 1 << 30))


def use_tf32():
    """fp32 matmuls on a GPU's tensor cores (TF32): their speed with no cast kernels, unlike bf16 autocast."""
    torch.set_float32_matmul_precision("high")


def fast_process_settings(device):
    """The fast path's process-wide settings: glibc keeps freed memory on a CPU, TF32 matmuls on a GPU."""
    if device.type == "cpu":
        keep_freed_memory()
    elif device.type == "cuda":
        use_tf32()


def environment(device):
    import peft

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "device": str(device), "threads": torch.get_num_threads(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cpu": cpu_model()}


# The instruction sets that int8 and bf16 speed depend on. Cloud CPUs often report a generic model name
# ("Intel(R) Xeon(R) Processor"), so these tell the kinds of machine apart.
CPU_FEATURES = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_model(cpuinfo="/proc/cpuinfo"):
    """The CPU's model name and which of CPU_FEATURES it has, e.g. "Intel(R) Xeon(R) Processor (avx512_vnni,
    avx512_bf16)": speeds depend on them (3x between the kinds of machine seen here)."""
    try:
        with open(cpuinfo) as f:
            info = f.read().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].split() for line in info if line.startswith("flags"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
    features = [f for f in CPU_FEATURES if f in flags]
    return f"{name} ({', '.join(features) or 'no VNNI, bf16 or AMX'})"

