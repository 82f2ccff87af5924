"""int8, shared by the formats that quantize: ONNX (ONNX Runtime's ``quantize_dynamic``) and AOTInductor (torchao's
PT2E flow). Both quantize dynamically (int8 weights per output channel, activations per tensor at run time) and
differ only in how a graph is quantized with some layer groups left in float32.

``search`` is the gate: quantized whole, the graph's agreement with float32 on real text (validate.Judge) must
hold the export's minimum; when it does not, each layer group is quantized alone to measure its sensitivity,
and a bisection over that order finds the fewest most sensitive groups whose staying in float32 holds it.
``finish`` measures where the chosen graph lands (tolerance, cosine, parity), whether int8 pays on this CPU,
and returns what the manifest records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..errors import OptionsError

if TYPE_CHECKING:
    from ..artifact import FormatEntry
    from . import Backend, ExportJob, Refiner

T = TypeVar("T")
PAYS = 1.1  # int8 must run at least this much faster than float32 to be worth its loss of precision


@dataclass
class Gated(Generic[T]):
    """What the gate chose: the groups kept in float32 (most sensitive first), the chosen graph and its
    agreement, the agreement quantized whole, and each group's sensitivity (its agreement quantized alone;
    empty when the whole graph held); ``escalated``: how many groups ``hold_compiled`` kept on top."""

    kept: tuple[str, ...]
    graph: T
    agreed: Any  # validate.Agreement
    whole: Any
    sensitivity: dict[str, float]
    escalated: int = 0


Probe = Callable[[tuple[str, ...]], float]  # keep -> the worst agreement on a sample of the gate's texts


def search(
    groups: Sequence[str], trial: Callable[[tuple[str, ...]], tuple[Any, T]], discard: Callable[[T], None],
    probe: Probe | None = None,
) -> Gated[T]:  # fmt: skip
    """Run the gate. ``trial(keep)`` quantizes every group but ``keep`` and returns (its validate.Agreement, the
    graph); ``discard`` drops a graph that was not chosen. An OptionsError, with every graph discarded, when
    even all but one group kept in float32 does not hold the gate.

    ``probe(keep)``, where given, measures the sensitivities instead of ``trial``: the same graph judged on a
    sample of the gate's texts and dropped. They only order the groups; every graph the gate chooses between is
    judged on all of them. all-MiniLM-L6-v2's ONNX graph has 33 groups: its gated int8 export took 347 s judging
    each on all 256 texts, 185 s probing each on 64, and kept the same 10 groups at the same gate value (2-core
    AVX2 EPYC, 2026-12-02). AOTInductor and OpenVINO probe likewise."""
    trials: dict[tuple[str, ...], tuple[Any, T]] = {}

    def holds(keep: Sequence[str]) -> bool:
        if tuple(keep) not in trials:
            trials[tuple(keep)] = trial(tuple(keep))
        return bool(trials[tuple(keep)][0].holds())

    sensitivity: dict[str, float] = {}
    kept: tuple[str, ...] | None = ()
    if not holds(()):
        for g in groups:
            alone = tuple(h for h in groups if h != g)  # g alone quantized
            if probe is not None:
                sensitivity[g] = round(probe(alone), 7)
                continue
            holds(alone)
            sensitivity[g] = round(trials[alone][0].worst, 7)
        order = sorted(groups, key=lambda g: sensitivity[g])  # the group that alone moves the results most first
        lo, hi, kept = 1, len(order) - 1, None
        while lo <= hi:
            k = (lo + hi) // 2
            if holds(order[:k]):
                kept, hi = tuple(order[:k]), k - 1
            else:
                lo = k + 1
    whole = trials[()][0]
    for keep, (_, graph) in trials.items():
        if keep != kept:
            discard(graph)
    if kept is None:
        raise OptionsError(
            f"int8 cannot hold the gate: {whole.metric} to float32 on real text is {whole.worst:.4f} quantized "
            f"whole, under {whole.minimum}, and still under it with all but one of {len(groups)} layer groups "
            "kept in float32; export float32 (--dtype float32), or lower the gate (--min-cosine / --min-top1)"
        )
    agreed, graph = trials[kept]
    return Gated(kept, graph, agreed, whole, sensitivity)


def hold_compiled(
    gated: Gated[T],
    groups: Sequence[str],
    trial: Callable[[tuple[str, ...]], tuple[Any, T]],
    judge: Callable[[T], Any],
    *,
    limit: int = 3,
    probe: Probe | None = None,
) -> Gated[T]:
    """The gate again, on the graph as it will run (``judge(graph)``: compile it, return its validate.Agreement),
    where ``search``'s trials ran a proxy of it (AOTInductor: the quantized module eagerly). While the compiled
    graph misses the gate, the next most sensitive group stays in float32 too, at most ``limit`` more times (each
    costs a compile). The sensitivities are measured here when the whole graph held in the trials, so none
    were (by ``probe`` where given, as in ``search``). Returns the choice with the compiled agreement; an
    OptionsError when it still misses."""
    kept, graph, sensitivity = gated.kept, gated.graph, dict(gated.sensitivity)
    for extra in range(limit + 1):
        agreed = judge(graph)
        if agreed.holds():
            return Gated(kept, graph, agreed, gated.whole, sensitivity, escalated=extra)
        if not sensitivity:
            alone = {g: tuple(h for h in groups if h != g) for g in groups}
            measure = probe or (lambda keep: float(trial(keep)[0].worst))
            sensitivity = {g: round(measure(alone[g]), 7) for g in groups}
        rest = [g for g in sorted(groups, key=lambda g: sensitivity[g]) if g not in kept]
        if len(rest) <= 1 or extra == limit:
            break
        kept += (rest[0],)
        _, graph = trial(kept)
    raise OptionsError(
        f"int8 held the gate in the trials ({gated.agreed.metric} {gated.agreed.worst:.5f}) but not compiled "
        f"({agreed.worst:.5f} < {agreed.minimum}), nor with {extra} more layer group(s) kept in float32 "
        f"({', '.join(kept[len(gated.kept) :]) or 'none left to keep'}); export float32, or lower the gate "
        "(--min-cosine / --min-top1)"
    )


def speedup(
    job: ExportJob, float32: Backend, reduced: Backend, batches: Sequence[dict[str, Any]] | None = None
) -> tuple[str, float]:  # fmt: skip
    """float32's time over a reduced precision's (int8, bfloat16) on the threads the export runs with: on
    ``batches`` (inputs by name, as the runtime runs them: Refiner.batches, the gate's sample of real text, short
    and long) where given, else at batch 8 and the longest bucket up to 128. Each side the fastest of at least 5
    runs, the two by turns (machine.fastest_by_turns). Medians of 5 runs taken one format after the other read
    0.81x and 1.30x for the same graphs in two exports a few minutes apart (the demo's ONNX, 2-core AVX2 EPYC,
    2026-12-02), either side of ``PAYS``. One shape says little of a corpus: dynamic int8 quantizes activations at
    each call, which costs more of a short micro-batch, and padding-free graphs run only the real tokens."""
    import torch

    from ..machine import fastest_by_turns

    if batches:
        feeds = [(b["input_ids"].shape[-1], tuple(b[name] for name in job.input_names)) for b in batches]
        texts = sum(int(b["input_ids"].shape[0]) for b in batches)
        shape = f"{texts} real texts in {len(feeds)} micro-batches"
    else:
        seq = max([b for b in job.buckets if b <= 128] or job.buckets[:1])
        generator = torch.Generator().manual_seed(0)
        full = {
            "input_ids": torch.randint(1000, 2000, (8, seq), generator=generator),
            "attention_mask": torch.ones(8, seq, dtype=torch.long),
            "token_type_ids": torch.zeros(8, seq, dtype=torch.long),
        }
        feeds, shape = [(seq, tuple(full[name] for name in job.input_names))], f"8x{seq}"

    def runs(backend: Backend) -> Callable[[], None]:
        def run() -> None:
            for length, inputs in feeds:
                backend.run(length, inputs)

        return run

    with torch.inference_mode():
        float32_s, reduced_s = fastest_by_turns([runs(float32), runs(reduced)], runs=5)
    return shape, float32_s / reduced_s


def finish(
    name: str, job: ExportJob, entry: FormatEntry, refiner: Refiner, gated: Gated[Any], *, method: str,
    pace: tuple[str, float], measured_on: str,
) -> dict[str, Any]:  # fmt: skip
    """With the chosen int8 graph in use (``refiner.use``): measure its drift from float32, hold it to parity at
    that tolerance, and return the export's notes and the manifest's ``precision``."""
    tolerance = refiner.measure()
    cosine = refiner.cosine()
    report = refiner.check(tolerance=tolerance)
    report.raise_on_failure(name)
    entry.parity = report.summary()
    shape, ratio = pace
    pays = (
        f"int8 pays on this CPU: {ratio:.2f}x float32 on {shape}"
        if ratio >= PAYS
        else f"int8 does not pay on this CPU ({ratio:.2f}x float32 on {shape}, under {PAYS}x): export float32"
    )
    agreed, unusual = gated.agreed, refiner.unusual()
    held = f"; {agreed.metric} {agreed.worst:.5f} >= {agreed.minimum} on real text"
    if gated.kept:
        groups = f"{len(gated.kept)} of {len(gated.sensitivity)} layer groups"
        held += f" with {groups} kept in float32 ({', '.join(gated.kept)})"
    if gated.escalated:
        held += f"; {gated.escalated} of them kept because the compiled graph missed the gate the trials held"
    held += f"; {unusual.metric} {unusual.worst:.5f} on {unusual.texts} texts unlike prose (not gated)"
    return {
        "notes": {"int8": pays + held},
        "precision": {
            "dtype": "int8",
            "device": "cpu",
            "method": method,
            "reference": "the eager model in float32 on cpu",
            "tolerance": tolerance,
            "min_cosine": cosine,
            "gate": {**agreed.summary(), "quantized_whole": round(gated.whole.worst, 7)},
            "unusual_text": {k: v for k, v in unusual.summary().items() if k not in ("min", "held")},
            "float32_layers": list(gated.kept),
            "sensitivity": gated.sensitivity,
            "speedup_vs_float32": {"shape": shape, "ratio": round(ratio, 3)},
            "measured_on": "parity cases drawn with seed 1; validated on those with seed 0; speed: "
            f"{measured_on} float32 against int8 on {shape}, each the fastest of 5 or more runs taken by turns "
            "after a warm-up, at export",
            "rule": f"each output's max abs diff from the float32 reference <= atol ({report.atol:g}) + 1.5 x "
            "tolerance",
        },
    }
