"""What the formats were timed on, and whether those timings still describe the process that routes by them.

Routing by timings is only as good as the timings: they belong to one CPU (or GPU), one thread count and one
load. ``fingerprint`` names the machine; ``OthersLoad`` measures how much of the CPUs other processes used while
something ran (Linux ``/proc/stat``; None elsewhere); ``stale`` says why recorded timings do not describe this
process, if they do not, so the runtime re-times them at load (``LoadOptions.calibrate``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .cache import default_dir
from .errors import OptionsError

if TYPE_CHECKING:
    from .artifact import Timings

ISA = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve")
# Other processes using at least this share of the CPUs while formats are timed make the timings suspect, and a
# load that sees at most QUIET of it re-times them (the gap keeps a steady, middling load from re-timing each time).
# A job that comes and goes (busy 0.2 s, idle 0.2 s) averaged 14-20 % over a whole timing and flipped up to 34 of
# 36 grid points, at 10 % regret on the corpus (benchmarks/routing.py), under the 25 % this was until 2026-12-01.
DISTURBED = 0.12
QUIET = 0.05


@functools.cache  # read once per process: every load of an artifact with timings compares it
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


@functools.cache
def _isa() -> tuple[str, ...]:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith(("flags", "Features"))), [])
    except OSError:
        return ()
    return tuple(sorted(set(flags) & set(ISA)))


def native_bfloat16() -> bool | None:
    """Whether an x86 CPU has bfloat16 arithmetic (AMX or AVX512-BF16), from ``/proc/cpuinfo``; None where it
    cannot tell (no flags to read, or not x86: Arm names bfloat16 otherwise)."""
    isa = set(_isa())
    if not isa or "asimd" in isa or "sve" in isa:
        return None
    return bool({"amx_bf16", "avx512_bf16"} & isa)


def bfloat16_pace(hidden: int, intermediate: int, tokens: int = 128, runs: int = 5, seconds: float = 0.05) -> float:
    """float32 time over bfloat16 time of one dense layer at a model's shape (``tokens`` x ``hidden`` ->
    ``intermediate``, the FFN's first and largest GEMM), each the fastest of at least ``runs`` runs taken by turns
    (``fastest_by_turns``: what the kernels can do, which other processes only slow down, and alike), on
    this process's threads: above 1, bfloat16 is the faster. Without bfloat16 arithmetic PyTorch converts the
    operands to float32 and runs slower than float32 itself (0.11-0.15x at all-MiniLM-L6-v2's shape on a 2-core
    AVX2 EPYC, quiet, 2026-12-01). float32 is the faster of PyTorch's linear and oneDNN's prepacked one: 2.30x
    against the first alone, 1.7-1.9x against both on an AVX512-BF16 EPYC (2026-12-02)."""
    generator = torch.Generator().manual_seed(0)
    x, w = torch.randn(tokens, hidden, generator=generator), torch.randn(intermediate, hidden, generator=generator)
    with torch.inference_mode():
        candidates = [functools.partial(torch.nn.functional.linear, x, w)]
        if onednn_linear():  # float32 TorchScript runs on oneDNN where that is the faster (onednn_linear_pays)
            packed = torch.ops.mkldnn._reorder_linear_weight(w)
            candidates.append(functools.partial(torch.ops.mkldnn._linear_pointwise, x, packed, None, "none", [], ""))
        candidates.append(functools.partial(torch.nn.functional.linear, x.to(torch.bfloat16), w.to(torch.bfloat16)))
        *float32, bfloat16 = fastest_by_turns(candidates, runs, seconds)
    return min(float32) / bfloat16


def fastest_by_turns(candidates: Sequence[Callable[[], object]], runs: int = 5, seconds: float = 0.05) -> list[float]:
    """The fastest run of each of ``candidates``, run by turns (at least ``runs`` each and ``seconds`` in all, after a
    warm-up of each), so that another process's load hits them alike: timed one after the other, a burst on the
    2-core EPYC while a test suite ran put oneDNN's pace at 0.55-2.64x over 12 measurements (3 of them under
    1.05x), by turns at 1.19-2.47x."""
    for run in candidates:
        run()
    times: list[list[float]] = [[] for _ in candidates]
    while len(times[0]) < runs or sum(map(sum, times)) < seconds:
        for run, took in zip(candidates, times, strict=True):
            start = time.perf_counter()
            run()
            took.append(time.perf_counter() - start)
    return [min(took) for took in times]


def onednn_linear() -> bool:
    """Whether this PyTorch has oneDNN's prepacked float32 linear (``mkldnn::_linear_pointwise``)."""
    available = bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]
    return available and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


ONEDNN_PAYS = 1.05  # lossless, so any gain counts; this much keeps timing noise from deciding
ONEDNN_ENV = "TORCHSHIP_ONEDNN_LINEAR"  # "1": always, "0": never, unset: measured (onednn_linear_pace)


def onednn_linear_pace(
    out_features: int, in_features: int, tokens: tuple[int, ...] = (16, 128, 1024), runs: int = 5,
    seconds: float = 0.02,
) -> float:  # fmt: skip
    """How much faster oneDNN's prepacked float32 linear runs than PyTorch's own (``F.linear``: MKL's sgemm on
    x86) at a layer of ``in_features`` -> ``out_features``: the geometric mean over ``tokens`` rows (one text's
    latency to a corpus micro-batch's throughput) of MKL's time over oneDNN's, each the fastest of ``runs`` runs
    taken by turns (``fastest_by_turns``), on this process's threads. MKL picks slower kernels on AMD CPUs:
    all-MiniLM-L6-v2's FFN layer ran 1.2-1.8x faster in oneDNN on a 2-core EPYC with AVX-512 (2026-12-02); on an
    AVX2 EPYC oneDNN led at 16 rows and trailed at 1024 (2026-12-01), and led 1.25-1.37x overall, quiet (2026-12-02)."""
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(out_features, in_features, generator=generator)
    b = torch.randn(out_features, generator=generator)
    packed = torch.ops.mkldnn._reorder_linear_weight(w)
    product = 1.0
    with torch.inference_mode():
        for m in tokens:
            x = torch.randn(1, m, in_features, generator=generator)
            mkl = functools.partial(torch.nn.functional.linear, x, w, b)
            onednn = functools.partial(torch.ops.mkldnn._linear_pointwise, x, packed, b, "none", [], "")
            mkl_s, onednn_s = fastest_by_turns((mkl, onednn), runs, 2 * seconds)
            product *= mkl_s / onednn_s
    return float(product ** (1 / len(tokens)))


def onednn_linear_pays(out_features: int, in_features: int, threads: int) -> tuple[bool, str]:
    """Whether float32 linear layers of this shape should run on oneDNN's prepacked kernels here, and why:
    ``ONEDNN_ENV`` forces it either way, else ``onednn_linear_pace`` decides (measured once per process, shape
    and thread count, about 0.1 s at all-MiniLM-L6-v2's)."""
    forced = os.environ.get(ONEDNN_ENV, "")
    if forced in ("0", "1"):
        return forced == "1", f"{ONEDNN_ENV}={forced}"
    if forced:
        raise OptionsError(f"{ONEDNN_ENV}={forced!r}: set it to 1 (always oneDNN), 0 (never), or leave it unset")
    if not onednn_linear():
        return False, "this PyTorch has no oneDNN prepacked linear"
    pace, when = _onednn_pace(out_features, in_features, threads)
    verdict = "pays" if pace >= ONEDNN_PAYS else f"does not pay (under {ONEDNN_PAYS}x)"
    shape = f"{in_features}->{out_features}"
    return pace >= ONEDNN_PAYS, f"oneDNN's prepacked linear ran {pace:.2f}x PyTorch's at {shape} ({when}): {verdict}"


# oneDNN keeps a compiled kernel per shape it has run, up to 1024 of them by default, and a padding-free graph's
# linear layers (oneDNN's in float32 where it pays, and always in bfloat16) see a new shape, its real tokens, at
# nearly every call: 600 calls of random shapes grew a process
# from 0.47 to 2.27 GB with oneDNN's linears, against 1.39 GB with MKL's, and to 1.43 GB with 32 kernels kept, at
# no cost in corpus time (compiling one takes far less than running it; 2-core EPYC, 2026-12-02).
# PyTorch's oneDNN wrapper (ideep) keeps its own cache of those kernels, keyed by shape, 1024 by default
# (LRU_CACHE_CAPACITY): what it holds outlives oneDNN's own bound, so the process still grew by about 2 MB per 100
# calls, 365 to 821 MB over 600 calls of 1-32 corpus texts; with 32 kept it stayed at 440-451 MB, MKL's level,
# and the corpus ran as fast (2-core AVX2 EPYC, 2026-12-02). A call needs 4 (one per linear shape; every layer
# shares them).
ONEDNN_CACHE = 32
ONEDNN_CACHES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")  # oneDNN's, then ideep's


def bound_onednn_cache() -> None:
    """Keep at most ``ONEDNN_CACHE`` compiled oneDNN kernels in each of oneDNN's and ideep's caches, unless the user
    set ``ONEDNN_CACHES``. Both are read when the first kernel is made, so this takes effect only before the
    process's first."""
    for name in ONEDNN_CACHES:
        os.environ.setdefault(name, str(ONEDNN_CACHE))


@functools.cache
def _onednn_pace(out_features: int, in_features: int, threads: int) -> tuple[float, str]:
    key = f"onednn-linear {in_features}->{out_features} threads={threads}"
    return recorded_pace(key, lambda: onednn_linear_pace(out_features, in_features))


PACES = "paces.json"  # in the export cache's directory (cache.default_dir)


def pace_key(key: str) -> str:
    """``key`` on this machine (``fingerprint``) and PyTorch's release (without its build tag: the C++ loader, which
    reads and writes the same records, knows only the release of the libtorch it was built against), as ``PACES``
    records it."""
    release = torch.__version__.split("+")[0]
    return json.dumps({**fingerprint(torch.device("cpu")), "torch": release, "key": key}, sort_keys=True)


def recorded_pace(key: str, measure: Callable[[], float], root: Path | None = None) -> tuple[float, str]:
    """``measure()``'s pace for ``key`` on this machine and PyTorch, and when it was measured: the one recorded in
    ``root/PACES`` (default: the export cache's directory) if a quiet measurement is there, else measured now and
    recorded if quiet (other processes used under ``DISTURBED`` of the CPUs meanwhile). A pace decides between
    equivalent kernels at each load; measured at each, a load burst flipped oneDNN's verdict 1 time in 12 on the
    2-core EPYC (2026-12-02), and a recorded quiet one cannot flip. Delete the file to measure again. A cache that
    cannot be read or written only costs the measurement."""
    path = (root or default_dir()) / PACES
    here = pace_key(key)
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        recorded = {}
    found = recorded.get(here) if isinstance(recorded, dict) else None
    if isinstance(found, dict) and isinstance(found.get("pace"), float):
        return found["pace"], f"measured quiet on this machine on {found.get('when', '?')}"
    load = OthersLoad().start()
    pace = measure()
    others = load.share()
    if others is not None and others >= DISTURBED:
        return pace, f"measured now while other processes used {others:.0%} of the CPUs; not recorded"
    recorded = recorded if isinstance(recorded, dict) else {}
    recorded[here] = {"pace": pace, "when": time.strftime("%Y-%m-%d"), "others_load": others}
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{PACES}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(recorded, indent=1, sort_keys=True))
        os.replace(partial, path)  # a reader sees the old file or the new one, never half of one
    return pace, "measured now, recorded"


def fingerprint(device: torch.device) -> dict[str, Any]:
    """What timings depend on besides threads: the CPU (name, cores, the vector and matrix instructions that
    decide which kernels run) and, on an accelerator, its name."""
    out: dict[str, Any] = {"cpu": cpu_name(), "cores": os.cpu_count(), "isa": list(_isa())}
    if device.type == "cuda":
        out["device"] = torch.cuda.get_device_name(device)
    elif device.type != "cpu":
        out["device"] = str(device)
    return out


def _cpu_busy_s() -> float | None:
    """Seconds all CPUs spent busy since boot (every process), or None where /proc/stat is not there."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class OthersLoad:
    """The share of all CPUs (0..1) that other processes used between ``start()`` and ``share()``: the machine's
    busy time less this process's CPU time, over wall time x CPUs. None where it cannot be measured."""

    def start(self) -> OthersLoad:
        self._busy, self._own, self._wall = _cpu_busy_s(), time.process_time(), time.perf_counter()
        return self

    def share(self) -> float | None:
        busy = _cpu_busy_s()
        wall = time.perf_counter() - self._wall
        if busy is None or self._busy is None or wall <= 0:
            return None
        others = (busy - self._busy) - (time.process_time() - self._own)
        return round(min(max(others / (wall * (os.cpu_count() or 1)), 0.0), 1.0), 3)


def others_load_now(seconds: float = 0.1) -> float | None:
    """Other processes' share of the CPUs over the next ``seconds`` (this process sleeps meanwhile)."""
    probe = OthersLoad().start()
    time.sleep(seconds)
    return probe.share()


def stale(timings: Timings, device: torch.device, threads: int, workers: int = 1) -> str | None:
    """Why ``timings`` do not describe this process, or None when they do: another machine, another thread
    count or number of workers, or a disturbed timing (other processes busy then) that a quiet machine can now
    redo.
    Timings recorded before machines were fingerprinted are taken as they are, but for the number of workers."""
    if timings.machine and timings.machine != (here := fingerprint(device)):
        differ = sorted(k for k in {*timings.machine, *here} if timings.machine.get(k) != here.get(k))
        was, now = timings.machine, here
        return "timed on another machine (" + "; ".join(f"{k} {was.get(k)} -> {now.get(k)}" for k in differ) + ")"
    if timings.machine and timings.threads != threads:
        return f"timed on {timings.threads} intra-op threads, and this process runs {threads}"
    if timings.workers != workers:  # a format that holds the GIL cannot overlap micro-batches (timing.py)
        return f"timed with {timings.workers} micro-batch(es) at once, and this process runs {workers}"
    if timings.others_load is not None and timings.others_load >= DISTURBED:
        quiet = others_load_now()
        if quiet is not None and quiet <= QUIET:
            return (
                f"timed while other processes used {timings.others_load:.0%} of the CPUs, and they use {quiet:.0%} now"
            )
    return None
