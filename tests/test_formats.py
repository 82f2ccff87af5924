"""AOTInductor and ONNX beside TorchScript: parity, forced and automatic format choice, caching, extras."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import torchship
from torchship.formats import aoti, onnx, openvino

FORMATS = ["torchscript", "aoti", "onnx", "openvino"]  # what "all" exports
DYNAMIC = ["aoti", "onnx", "openvino"]


@pytest.fixture(scope="module")
def all_formats(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, export_cache: Path) -> Path:
    out = tmp_path_factory.mktemp("formats") / "all"
    options = torchship.ExportOptions(formats=("all",), seq_lengths=(8, 32), cache_dir=export_cache)
    return torchship.export(tiny_bert_dir, out, options)


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_manifest_records_every_format_with_parity_and_timings(all_formats: Path) -> None:
    m = _manifest(all_formats)
    assert list(m["formats"]) == FORMATS
    for fmt in DYNAMIC:
        (entry,) = m["formats"][fmt]
        assert entry["batch"] is None
        assert entry["seq"] is None
        assert entry["max_seq"] == 32
        assert entry["parity"]["passed"] is True
        assert max(entry["parity"]["max_abs_diff"].values()) <= 1e-4
        assert [b for b, _ in entry["parity"]["validated_shapes"]] == [3, 3]
    timings = m["timings"]
    assert timings["batch"] == [1, 8, 32]
    assert timings["seq"] == [8, 32]
    for fmt in FORMATS:
        assert set(timings["median_ms"][fmt]) == {"1x8", "1x32", "8x8", "8x32", "32x8", "32x32"}
        assert all(ms > 0 for ms in timings["median_ms"][fmt].values())
    assert set(m["export"]["format_seconds"]) == set(FORMATS)
    assert "onnx_fusion" in m["export"]["notes"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_matches_eager_at_untraced_shapes(all_formats: Path, tiny_bert_dir: Path, fmt: str) -> None:
    from transformers import AutoModel

    predictor = torchship.load(all_formats, format=fmt)
    assert list(predictor.backends) == [fmt]
    eager = AutoModel.from_pretrained(tiny_bert_dir).eval()
    torch.manual_seed(3)
    for batch, seq in [(1, 3), (5, 19), (2, 32)]:
        ids = torch.randint(1000, 5000, (batch, seq))
        mask = torch.ones_like(ids)
        mask[0, seq // 2 + 1 :] = 0
        got = predictor.run(ids, mask)
        with torch.inference_mode():
            want = eager(input_ids=ids, attention_mask=mask)
        assert (got["last_hidden_state"] - want.last_hidden_state)[mask.bool()].abs().max() <= 1e-4
        assert (got["pooler_output"] - want.pooler_output).abs().max() <= 1e-4
    if fmt != "torchscript":
        assert predictor.bucket_for(19) == 24  # dynamic formats pad only to a multiple of 8


def test_auto_format_picks_the_fastest_recorded(all_formats: Path) -> None:
    predictor = torchship.load(all_formats, calibrate=False)  # routes by the recorded timings, even if stale
    medians = _manifest(all_formats)["timings"]["median_ms"]
    winners = {min(medians, key=lambda f: medians[f][point]) for point in medians["onnx"]}
    assert set(predictor.backends) == winners  # only the formats routing can pick are loaded
    for batch, seq in [(1, 5), (1, 30), (8, 8), (12, 32), (64, 8)]:
        grid = f"{1 if batch < 3 else 8 if batch < 16 else 32}x{8 if seq <= 8 else 32}"
        fastest = min(medians, key=lambda f: medians[f][grid])
        assert predictor.engine.select(batch, seq).name == fastest
    texts = ["hello world", "a somewhat longer sentence about muppets and puppets", "x"]
    auto = predictor(texts)
    for fmt in FORMATS:
        np.testing.assert_allclose(torchship.load(all_formats, format=fmt)(texts), auto, atol=1e-5)


def test_files_load_without_torchship(all_formats: Path) -> None:
    """The .pt2 loads with torch._inductor alone; the .onnx with a plain ONNX Runtime session."""
    import onnxruntime as ort

    ids = torch.tensor([[101, 2000, 2001, 102]])
    runner = torch._inductor.aoti_load_package(str(all_formats / aoti.FILE))
    out = runner(ids, torch.ones_like(ids), torch.zeros_like(ids))
    assert out[0].shape == (1, 4, 32)
    session = ort.InferenceSession(str(all_formats / onnx.FILE), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    feed = {
        "input_ids": ids.numpy(),
        "attention_mask": np.ones((1, 4), np.int64),
        "token_type_ids": np.zeros((1, 4), np.int64),
    }
    np.testing.assert_allclose(session.run(["pooler_output"], feed)[0], out[1].numpy(), atol=1e-5)
    import openvino as ov  # the IR with OpenVINO alone; the inputs bound by name

    compiled = ov.Core().compile_model(str(all_formats / openvino.FILE), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert [i.get_any_name() for i in compiled.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    got = compiled.create_infer_request().infer(feed)[compiled.output("pooler_output")]
    np.testing.assert_allclose(got, out[1].numpy(), atol=1e-5)


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every AOTInductor compile this test makes (the real one runs)."""
    return _counted(monkeypatch, torch._inductor, "aoti_compile_and_package")


@pytest.fixture
def onnx_exports(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every ONNX export this test makes (the real one runs)."""
    return _counted(monkeypatch, torch.onnx, "export")


def _counted(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[object]:
    made: list[object] = []
    real = getattr(owner, name)

    def counted(*args: object, **kwargs: object) -> object:
        made.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return made


def test_exported_graphs_and_compiled_packages_are_reused_from_the_cache(
    all_formats: Path, tiny_bert_dir: Path, tmp_path: Path, compiles: list[object], onnx_exports: list[object]
) -> None:
    cache = Path(_manifest(all_formats)["export"]["options"]["cache_dir"])
    (cached,) = [p for p in (cache / "aoti").glob("*.pt2") if (all_formats / aoti.FILE).read_bytes() == p.read_bytes()]
    assert (cache / "onnx" / (cached.stem + ".onnx")).is_file()  # the raw graph, under the same key
    options = torchship.ExportOptions(formats=("aoti", "onnx"), seq_lengths=(8, 32), cache_dir=cache)
    again = torchship.export(tiny_bert_dir, tmp_path / "again", options)
    assert (compiles, onnx_exports) == ([], [])  # the package and the graph came from the cache
    assert (again / aoti.FILE).read_bytes() == cached.read_bytes()
    assert (again / onnx.FILE).read_bytes() == (all_formats / onnx.FILE).read_bytes()  # fused alike
    m = _manifest(again)
    assert m["formats"]["aoti"][0]["parity"]["passed"] is m["formats"]["onnx"][0]["parity"]["passed"] is True
    moved = shutil.copytree(tiny_bert_dir, tmp_path / "moved")  # the same checkpoint elsewhere: the same files
    torchship.export(moved, tmp_path / "moved-art", options)
    assert (compiles, onnx_exports) == ([], [])
    fresh = tmp_path / "cache"  # the run's cache may hold the padded graph already (int8 ONNX exports it)
    padded = dataclasses.replace(options, formats=("onnx",), unpad=False, cache_dir=fresh)
    torchship.export(tiny_bert_dir, tmp_path / "padded", padded)
    assert len(onnx_exports) == 1
    (graph,) = (fresh / "onnx").glob("*.onnx")
    assert graph.stem != cached.stem  # another layout: another key


def test_int8_aoti_quantizes_the_validated_float32_package_with_torchao(
    all_formats: Path, tiny_bert_dir: Path, tmp_path: Path, compiles: list[object]
) -> None:
    from tests.conftest import corpus_texts

    cache = Path(_manifest(all_formats)["export"]["options"]["cache_dir"])
    options = torchship.ExportOptions(formats=("aoti",), seq_lengths=(8, 32), dtype="int8", cache_dir=cache)
    art = torchship.export(tiny_bert_dir, tmp_path / "int8", options)
    assert len(compiles) == 1  # the float32 package came from the float32 export's cache; int8 is compiled once
    m = _manifest(art)
    precision = m["precision"]
    assert precision["dtype"] == "int8"
    assert precision["method"].startswith("torchao PT2E")
    assert precision["gate"]["held"] is True
    assert precision["gate"]["measured"]["sentence_embedding"] >= 0.995  # measured on the compiled package
    assert precision["float32_layers"] == []  # the tiny model holds the default gate quantized whole
    assert precision["speedup_vs_float32"]["ratio"] > 0
    assert m["formats"]["aoti"][0]["parity"]["passed"] is True
    assert "int8" in m["export"]["notes"]
    texts = [" ".join(t.split()[:20]) for t in corpus_texts()[:16]]  # within the 32-token bucket
    int8, float32 = torchship.load(art)(texts), torchship.load(all_formats, format="aoti")(texts)
    assert not np.array_equal(int8, float32)  # quantized
    cosine = (int8 * float32).sum(1) / np.linalg.norm(int8, axis=1) / np.linalg.norm(float32, axis=1)
    assert cosine.min() > 0.999, cosine.min()


def test_aoti_int8_groups_are_the_encoder_layers_and_the_head(tiny_bert_dir: Path) -> None:
    from transformers import AutoModel

    from torchship.wrap import ExportWrapper

    model = AutoModel.from_pretrained(tiny_bert_dir).eval()
    wrapper = ExportWrapper(model, ("input_ids", "attention_mask"), ("last_hidden_state", "pooler_output")).eval()
    ids = torch.randint(1000, 2000, (2, 16))
    program = torch.export.export(wrapper, (ids, torch.ones_like(ids)), strict=False)
    groups = aoti.linear_groups(program)
    assert list(groups) == ["model.encoder.layer.0", "model.encoder.layer.1", "model.pooler"]
    assert groups["model.encoder.layer.1"] == [
        f"model.encoder.layer.1.{name}"
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                     "intermediate.dense", "output.dense")
    ]  # fmt: skip
    assert groups["model.pooler"] == ["model.pooler.dense"]


def test_int8_quantizer_imports_quietly_where_inductor_was_not_imported_yet() -> None:
    """torchao's x86 quantizer imports torch._inductor, whose first import warns that torch.jit.script_method is
    deprecated (first imported there when the float32 package came from the cache): torchship keeps it quiet."""
    code = (
        "import sys, warnings\n"
        "import torchship.formats.aoti as aoti\n"
        "assert 'torch._inductor.compile_fx' not in sys.modules\n"
        "warnings.simplefilter('error', DeprecationWarning)\n"
        "warnings.filterwarnings('ignore', 'invalid escape sequence')  # torchao's sources, compiled on first import\n"
        "aoti._quantizer()\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]


def test_int8_aoti_without_torchao_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchao", None)  # what an environment without torchao imports
    with pytest.raises(torchship.OptionsError, match=r"torchao is not installed: pip install 'torchship\[int8\]'"):
        torchship.ExportOptions(formats=("aoti",), dtype="int8")


def test_missing_format_is_a_clear_error(tiny_bert_artifact: Path) -> None:
    with pytest.raises(torchship.ArtifactError, match="has no 'onnx' format; it holds: torchscript"):
        torchship.load(tiny_bert_artifact, format="onnx")
    predictor = torchship.load(tiny_bert_artifact)
    with pytest.raises(torchship.InputError, match="format 'aoti' is not in this artifact; it holds: torchscript"):
        predictor.run([[101, 102]], format="aoti")


def test_missing_onnxruntime_names_the_extra(all_formats: Path) -> None:
    code = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "onnxruntime":
            raise ImportError("blocked")
sys.meta_path.insert(0, Block())
import torchship
try:
    torchship.load({str(all_formats)!r}, format="onnx")
except torchship.OptionsError as e:
    print(e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'torchship[onnx]'" in out


def test_missing_openvino_names_the_extra(all_formats: Path) -> None:
    """Without openvino an export that asks for it stops before writing anything, and a load that routes to it
    (or forces it) says what to install; an artifact's other formats still load."""
    code = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("openvino", "nncf"):
            raise ImportError("blocked")
sys.meta_path.insert(0, Block())
import torchship
for make in (lambda: torchship.ExportOptions(formats=("all",)),
             lambda: torchship.load({str(all_formats)!r}, format="openvino")):
    try:
        make()
    except torchship.OptionsError as e:
        print(e)
print(torchship.load({str(all_formats)!r}, format="onnx")(["hello"]).shape)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.count("format 'openvino' needs openvino, which is not installed: pip install 'torchship[openvino]'") == 2
    assert out.strip().endswith("(1, 32)")


def test_calibrate_retimes_the_formats_here_and_routes_by_that(all_formats: Path) -> None:
    recorded = _manifest(all_formats)["timings"]
    predictor = torchship.load(all_formats, calibrate=True)
    timings = predictor.timings
    assert timings is not None
    assert timings.source == "calibrated"
    assert (timings.batch, timings.seq) == (recorded["batch"], recorded["seq"])
    assert timings.threads == torch.get_num_threads()
    medians = timings.median_ms
    assert set(medians) == set(FORMATS)
    assert all(set(m) == set(recorded["median_ms"]["onnx"]) and min(m.values()) > 0 for m in medians.values())
    assert medians != recorded["median_ms"]  # measured now, not copied from the manifest
    for batch, seq in [(1, 5), (8, 32), (40, 8)]:
        grid = f"{1 if batch < 3 else 8 if batch < 16 else 32}x{8 if seq <= 8 else 32}"
        assert predictor.engine.select(batch, seq).name == min(medians, key=lambda f: medians[f][grid])
    assert predictor.counters.padded_tokens == 0  # timing runs are not counted as work
    assert _manifest(all_formats)["timings"] == recorded  # the artifact is not touched
    single = torchship.load(all_formats, format="onnx", calibrate=True)
    assert single.timings is not None  # one format: nothing to choose, nothing timed
    assert dataclasses.asdict(single.timings) == recorded


def test_only_formats_routing_can_pick_are_loaded_and_checked(all_formats: Path, tmp_path: Path, monkeypatch) -> None:
    """A format slower everywhere is neither loaded nor hashed (a corrupt file of it goes unnoticed until it is
    forced, which loads it then and names the file); and a file checked once is not hashed again."""
    import shutil

    from torchship import artifact

    art = tmp_path / "art"
    shutil.copytree(all_formats, art)
    data = _manifest(art)
    for slow in ("aoti", "openvino"):
        data["timings"]["median_ms"][slow] = {k: 1e9 for k in data["timings"]["median_ms"][slow]}
    (art / "manifest.json").write_text(json.dumps(data))
    weights = "openvino/model.bin"  # beside openvino.FILE: a format's folder is its own
    for corrupt in (aoti.FILE, weights):
        blob = bytearray((art / corrupt).read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        (art / corrupt).write_bytes(bytes(blob))
    hashed: list[str] = []
    real = artifact.sha256_file
    monkeypatch.setattr(artifact, "sha256_file", lambda path: hashed.append(path.name) or real(path))
    predictor = torchship.load(art, calibrate=False)  # re-timing would load every format
    assert "aoti" not in predictor.backends
    assert set(predictor.backends) <= {"torchscript", "onnx"}
    assert aoti.FILE not in hashed
    assert "model.bin" not in hashed
    assert predictor(["hello world"]).shape == (1, 32)
    with pytest.raises(torchship.ChecksumError, match="model.pt2"):
        predictor.run([[101, 2000, 102]], format="aoti")
    with pytest.raises(torchship.ChecksumError, match=weights):
        predictor.run([[101, 2000, 102]], format="openvino")
    hashed.clear()
    torchship.load(art, calibrate=False)  # the same files, unchanged: nothing is hashed again
    assert hashed == []
    (art / "tokenizer" / "tokenizer.json").write_text((art / "tokenizer" / "tokenizer.json").read_text() + " ")
    with pytest.raises(torchship.ChecksumError, match="tokenizer.json"):
        torchship.load(art, calibrate=False)  # a changed file is hashed again


def test_calibrate_keeps_to_its_time_budget(all_formats: Path) -> None:
    recorded = _manifest(all_formats)["timings"]["median_ms"]
    predictor = torchship.load(all_formats, calibrate=True, calibrate_budget_s=0.001)
    timings = predictor.timings
    assert timings is not None
    medians = timings.median_ms
    # the cheapest point is always timed; the budget is spent before the next, and the others are estimated from
    # it by FLOPs: the export's figures are never kept, since re-timing means they do not describe this process
    assert timings.estimated == sorted(set(recorded["onnx"]) - {"1x8"})
    cost = predictor.engine.cost
    for fmt, timed in medians.items():
        for point in timings.estimated:
            batch, seq = map(int, point.split("x"))
            assert timed[point] == pytest.approx(timed["1x8"] * batch * cost(seq) / cost(8), rel=1e-3), (fmt, point)
    assert set(predictor.backends) == {min(medians, key=lambda f: medians[f][p]) for p in medians["onnx"]}
    with pytest.raises(torchship.OptionsError, match="calibrate_budget_s"):
        torchship.load(all_formats, calibrate=True, calibrate_budget_s=0)


def _with_timings(src: Path, dst: Path, **changes: object) -> Path:
    """A copy of the artifact ``src`` whose recorded timings have ``changes``."""
    shutil.copytree(src, dst)
    data = _manifest(dst)
    data["timings"].update(changes)
    (dst / "manifest.json").write_text(json.dumps(data))
    return dst


def test_timings_that_do_not_describe_this_process_are_retimed_at_load(all_formats: Path, tmp_path: Path) -> None:
    """With calibrate=None (the default) the formats are re-timed at load only where the recorded timings belong to
    another machine or thread count (or to a disturbed export, on a quiet machine); False never re-times."""
    from torchship import machine

    here = machine.fingerprint(torch.device("cpu"))
    assert here["cores"] == os.cpu_count()
    assert here["cpu"]
    threads = torch.get_num_threads()
    fresh = _with_timings(all_formats, tmp_path / "fresh", machine=here, threads=threads, others_load=0.0)
    timings = torchship.load(fresh).timings
    assert timings is not None
    assert timings.source == "export"

    moved = _with_timings(all_formats, tmp_path / "moved", machine={**here, "cpu": "Other CPU", "isa": ["avx2"]},
                          threads=threads, others_load=0.0)  # fmt: skip
    predictor = torchship.load(moved)
    timings = predictor.timings
    assert timings is not None
    assert timings.source.startswith("re-timed at load: timed on another machine (cpu")
    assert "Other CPU -> " in timings.source
    assert "isa ['avx2'] -> " in timings.source
    assert timings.machine == here
    assert set(timings.median_ms) == set(FORMATS)
    assert set(predictor.backends) == set(predictor.engine.routed())  # the formats that won nowhere are let go
    assert _manifest(moved)["timings"]["machine"]["cpu"] == "Other CPU"  # the artifact is not touched
    not_asked = torchship.load(moved, calibrate=False).timings
    assert not_asked is not None
    assert not_asked.source == "export"

    other_threads = _with_timings(all_formats, tmp_path / "threads", machine=here, threads=threads + 1)
    timings = torchship.load(other_threads).timings
    assert timings is not None
    assert f"timed on {threads + 1} intra-op threads" in timings.source
    with pytest.raises(torchship.OptionsError, match="calibrate must be True, False or None"):
        torchship.load(fresh, calibrate="yes")


def test_a_disturbed_timing_is_redone_only_on_a_quiet_machine(all_formats: Path, monkeypatch) -> None:
    from torchship import artifact, machine

    recorded = artifact.read_manifest(all_formats).timings
    assert recorded is not None
    assert recorded.machine
    assert recorded.others_load is not None
    disturbed = dataclasses.replace(recorded, others_load=0.6)
    here, threads = torch.device("cpu"), recorded.threads
    monkeypatch.setattr(machine, "others_load_now", lambda seconds=0.1: 0.5)  # still busy: nothing to gain
    assert machine.stale(disturbed, here, threads) is None
    monkeypatch.setattr(machine, "others_load_now", lambda seconds=0.1: 0.02)
    assert "other processes used 60% of the CPUs, and they use 2% now" in str(machine.stale(disturbed, here, threads))
    assert machine.stale(dataclasses.replace(recorded, others_load=0.1), here, threads) is None
    assert "timed with 1 micro-batch(es) at once, and this process runs 2" in str(
        machine.stale(dataclasses.replace(recorded, others_load=0.0), here, threads, 2)
    )


def test_timings_at_several_workers_are_taken_with_micro_batches_at_once(all_formats: Path) -> None:
    """With workers > 1 a format is timed as the engine runs it, that many micro-batches at once: one that holds
    the GIL (AOTInductor's runner) cannot overlap them, and timed alone it would take every micro-batch."""
    threads = torchship.load(all_formats, calibrate=False).timings.threads  # type: ignore[union-attr]
    predictor = torchship.load(all_formats, threads=threads, workers=2)
    timings = predictor.timings
    assert timings is not None
    assert timings.workers == 2
    assert "timed with 1 micro-batch(es) at once, and this process runs 2" in timings.source
    assert torchship.load(all_formats, threads=threads, workers=1).timings.workers == 1  # type: ignore[union-attr]


def test_an_export_timed_on_a_busy_machine_says_so(tiny_bert_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from torchship import machine

    monkeypatch.setattr(machine.OthersLoad, "share", lambda self: 0.5)  # other processes held half the CPUs
    options = torchship.ExportOptions(formats=("torchscript", "onnx"), seq_lengths=(8, 32), timing_budget_s=0)
    data = _manifest(torchship.export(tiny_bert_dir, tmp_path / "art", options))
    assert data["timings"]["others_load"] == 0.5
    assert data["timings"]["machine"] == machine.fingerprint(torch.device("cpu"))
    assert "other processes used 50% of the CPUs while the formats were timed" in data["export"]["notes"]["timings"]


def test_points_timed_while_others_were_busy_are_timed_again(all_formats: Path, monkeypatch) -> None:
    """A job that comes and goes spoils the points it hits, while the whole timing's load stays low: a point
    during which others used DISTURBED of the CPUs or more is timed once more, and only that point."""
    from collections import Counter

    from torchship import machine, timing

    engine = torchship.load(all_formats, calibrate=False).engine
    for name in engine.available:
        engine.backend(name)
    shares = iter([0.6])  # the first share asked for, the first point's, was busy; every later one quiet
    monkeypatch.setattr(machine.OthersLoad, "share", lambda self: next(shares, 0.0))
    calls: Counter[tuple[int, ...]] = Counter()
    forward = engine.forward

    def counted(backend, padded):  # type: ignore[no-untyped-def]
        calls[tuple(padded["input_ids"].shape)] += 1
        return forward(backend, padded)

    monkeypatch.setattr(engine, "forward", counted)
    seqs = engine.buckets
    timings = timing.time_formats(engine, seqs, budget_s=0)  # no budget: 1 warm-up and 3 runs per format
    formats = len(engine.backends)

    def runs(batch: int, seq: int) -> int:  # forward passes at this grid point, every format's padding
        return sum(calls[k] for k in {(batch, backend.pad_length(seq)) for backend in engine.backends.values()})

    first, *others = timing.order(engine, seqs)
    assert runs(*first) == 2 * 4 * formats  # timed twice
    assert [runs(*point) for point in others] == [4 * formats] * len(others)  # once
    assert all(f"{first[0]}x{first[1]}" in timings.median_ms[name] for name in engine.backends)


def test_others_load_measures_what_another_process_uses() -> None:
    """OthersLoad is the machine's busy time less this process's own: a process spinning one core shows."""
    from torchship.machine import OthersLoad

    idle = OthersLoad().start()
    spin = "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"
    spinner = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.3)
        probe = OthersLoad().start()
        sum(i * i for i in range(2_000_000))  # this process's own work is not counted
        time.sleep(0.5)
        share = probe.share()
    finally:
        spinner.wait()
    assert share is not None
    assert share >= 0.8 / (os.cpu_count() or 1)
    assert idle.share() is not None


def test_points_past_the_timing_budget_are_estimated_by_flops(all_formats: Path) -> None:
    """What an export does past its timing budget (ExportOptions.timing_budget_s): the cheapest point is timed,
    the others are scaled from it by FLOPs (no other batch has a timed point), and are listed as estimated; none
    is missing."""
    from torchship.timing import time_formats

    engine = torchship.load(all_formats).engine
    for name in engine.available:
        engine.backend(name)
    timings = time_formats(engine, [8, 32], total_s=1e-9)
    assert timings.estimated == sorted({"8x8", "32x8", "1x32", "8x32", "32x32"})
    for name, medians in timings.median_ms.items():
        assert set(medians) == {f"{b}x{s}" for b in (1, 8, 32) for s in (8, 32)}
        for key in timings.estimated:
            batch, seq = map(int, key.split("x"))
            expected = medians["1x8"] * batch * engine.cost(seq) / engine.cost(8)
            assert medians[key] == pytest.approx(expected, rel=1e-3), (name, key)


def test_every_grid_batch_is_timed_before_the_budget_goes_to_longer_lengths(all_formats: Path) -> None:
    """Which format is fastest depends on the batch: each batch gets an anchor point first, and a point left out
    is estimated from its own batch's timed points (one batch-1 point scaled to batch 32 misrouted a corpus)."""
    from torchship.timing import estimate, order

    engine = torchship.load(all_formats, format="onnx").engine
    assert order(engine, [8, 32]) == [(1, 8), (8, 8), (32, 8), (1, 32), (8, 32), (32, 32)]
    timed = {"1x8": 1.0, "8x8": 4.0, "32x8": 20.0, "1x32": 5.0}
    filled = estimate(engine, timed, order(engine, [8, 32]))
    assert filled == {"8x32", "32x32"}
    ratio = engine.cost(32) / engine.cost(8)
    assert timed["8x32"] == pytest.approx(4.0 * ratio, rel=1e-3)  # from 8x8, not from batch 1
    assert timed["32x32"] == pytest.approx(20.0 * ratio, rel=1e-3)
    lone = {"1x8": 1.0}
    estimate(engine, lone, order(engine, [8, 32]))
    assert lone["32x32"] == pytest.approx(32 * engine.cost(32) / engine.cost(8), rel=1e-3)  # no batch-32 anchor


def test_a_points_expected_cost_is_its_runs_not_the_last_points_wall_time() -> None:
    """What timing a point will cost comes from the last point's runs scaled by FLOPs, with each format's
    warm-up and its run count (3 at least, until budget_s, max_reps at most), never from that point's wall time,
    which held the formats' first runs: scaled 8x, a cold first point had outrun a load's whole budget."""
    from torchship.timing import expected_s

    fast, slow = {"onnx": 0.001, "torchscript": 0.001}, {"aoti": 0.1}
    assert expected_s(fast, 8, 0.15, 15) == pytest.approx(2 * (0.008 + 0.12))  # 15 runs, under 0.15 s
    assert expected_s(fast, 2, 0.15, 15) == pytest.approx(2 * (0.002 + 0.03))
    assert expected_s(fast, 30, 0.15, 15) == pytest.approx(2 * (0.03 + 0.15))  # until 0.15 s
    assert expected_s(slow, 1, 0.15, 15) == pytest.approx(0.1 + 0.3)  # 3 runs at least
    assert expected_s(fast, 30, 0.15, 15, workers=2) == pytest.approx(2 * (0.03 + 0.3))  # per micro-batch


def test_timing_budget_zero_times_the_cheapest_point_only(tiny_bert_dir: Path, tmp_path: Path) -> None:
    options = torchship.ExportOptions(formats=("torchscript", "onnx"), seq_lengths=(8, 32), timing_budget_s=0)
    timings = _manifest(torchship.export(tiny_bert_dir, tmp_path / "art", options))["timings"]
    assert timings["estimated"] == sorted({"8x8", "32x8", "1x32", "8x32", "32x32"})  # all but 1x8
    for bad in (-1, float("inf"), True, "6"):
        with pytest.raises(torchship.OptionsError, match="timing_budget_s must be a number of seconds >= 0"):
            torchship.ExportOptions(timing_budget_s=bad)  # type: ignore[arg-type]


def test_dynamic_formats_split_micro_batches_at_the_cheapest_cuts(all_formats: Path) -> None:
    """Rows sorted by length are cut where padding would cost more than another call: the split equals the
    best of every contiguous split (brute force), and keeps the row and token budgets."""
    import itertools

    predictor = torchship.load(all_formats, format="aoti", micro_batch_size=4, max_batch_tokens=96)
    lengths = np.array([3, 30, 9, 4, 17, 26, 5, 31])
    jobs = predictor.engine.plan(lengths)
    assert sorted(r for rows, _, _ in jobs for r in rows) == list(range(len(lengths)))
    for rows, padded, backend in jobs:
        assert len(rows) <= 4
        assert len(rows) == 1 or len(rows) * padded <= 96
        assert padded == backend.pad_length(int(max(lengths[rows])))

    cost, call = predictor.engine.cost, predictor.engine.cost(16)

    def total(chunks: list[list[int]]) -> float:
        return sum(len(c) * cost(predictor.backends["aoti"].pad_length(max(c))) + call for c in chunks)

    for bucket in (8, 32):  # rows are grouped by bucket first, then split
        group = sorted(int(n) for n in lengths if (n <= 8) == (bucket == 8))
        best = float("inf")
        for cuts in itertools.product([False, True], repeat=len(group) - 1):
            chunks, current = [], [group[0]]
            for n, cut in zip(group[1:], cuts, strict=True):
                if cut:
                    chunks.append(current)
                    current = []
                current.append(n)
            chunks.append(current)
            pads = [predictor.backends["aoti"].pad_length(max(c)) for c in chunks]
            if all(len(c) <= 4 and (len(c) == 1 or len(c) * p <= 96) for c, p in zip(chunks, pads, strict=True)):
                best = min(best, total(chunks))
        in_group = [rows for rows, _, _ in jobs if (max(lengths[rows]) <= 8) == (bucket == 8)]
        planned = [[int(lengths[r]) for r in rows] for rows in in_group]
        assert total(planned) == pytest.approx(best)


def test_torchscript_on_cpu_runs_without_the_profiling_executor(tiny_bert_artifact: Path) -> None:
    """The profiling executor keeps a graph per input shape: twice the memory of a long job, at equal speed
    (README, "Memory of a long job"). Loading onto the CPU switches it off."""
    torch._C._jit_set_profiling_executor(True)
    torchship.load(tiny_bert_artifact, format="torchscript")
    assert torch._C._jit_set_profiling_executor(False) is False  # the value the load left: off


def test_torchscript_runs_its_float32_linears_on_onednn_where_that_measured_faster(
    tiny_bert_artifact: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """MKL's sgemm, behind PyTorch's float32 linear on x86, picks slow kernels on AMD CPUs. On CPU a loaded
    ``model.pt`` has its linear layers rewritten onto oneDNN's prepacked kernels where those measured faster
    (``TORCHSHIP_ONEDNN_LINEAR`` forces either way): the same numbers, and the file itself is untouched."""
    import hashlib
    import logging

    from torchship import machine
    from torchship.formats import torchscript

    def digest() -> str:
        return hashlib.sha256((tiny_bert_artifact / "model.pt").read_bytes()).hexdigest()

    before = digest()
    module = torchscript.load_module(tiny_bert_artifact / "model.pt")
    graphs = [getattr(module, torchscript.method_name(s)).graph for s in (8, 16, 32)] + [module.forward.graph]
    kinds = [[n.kind() for n in g.nodes()] for g in graphs]
    linears = sum(k.count("aten::linear") for k in kinds)
    assert linears >= 4 * len(graphs)  # tiny_bert_dir: 2 layers of 4 linears (q, k, v fused: unpad.py) + pooler
    packed = torchscript.prepack_linears(graphs)
    assert packed == linears // len(graphs)  # each weight packed once, shared by every method
    kinds = [[n.kind() for n in g.nodes()] for g in graphs]
    assert sum(k.count("aten::linear") for k in kinds) == 0
    assert sum(k.count("mkldnn::_linear_pointwise") for k in kinds) == linears

    ids = torch.randint(1000, 5000, (3, 21))
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0
    outputs = {}
    for forced in ("0", "1"):
        monkeypatch.setenv(machine.ONEDNN_ENV, forced)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="torchship.formats.torchscript"):
            predictor = torchship.load(tiny_bert_artifact, format="torchscript")
        assert f"linear layers {'on oneDNN' if forced == '1' else 'as traced'}: {machine.ONEDNN_ENV}={forced}" in (
            caplog.text
        )
        outputs[forced] = predictor.run(ids, mask)["last_hidden_state"]
    real = mask.bool()
    torch.testing.assert_close(outputs["1"][real], outputs["0"][real], atol=1e-5, rtol=1e-4)
    assert digest() == before

    monkeypatch.delenv(machine.ONEDNN_ENV)
    pays, why = machine.onednn_linear_pays(64, 32, torch.get_num_threads())  # measured: either verdict is right
    pace = float(why.split(" ran ")[1].split("x ")[0])
    assert pays == (pace >= machine.ONEDNN_PAYS)
    assert why.endswith("pays" if pays else f"does not pay (under {machine.ONEDNN_PAYS}x)")
    monkeypatch.setenv(machine.ONEDNN_ENV, "yes")
    with pytest.raises(torchship.OptionsError, match="set it to 1 .* 0 .* or leave it unset"):
        torchship.load(tiny_bert_artifact, format="torchscript")


def test_a_quiet_pace_is_recorded_per_machine_and_reused_instead_of_measured_again(tmp_path: Path) -> None:
    """A load burst flipped oneDNN's verdict 1 time in 12: a pace measured quiet is recorded in the export cache's
    directory, keyed by machine and PyTorch, and a later load reuses it; a disturbed one is used but not recorded;
    a damaged or unwritable record only costs the measurement."""
    from torchship import machine

    def never() -> float:
        raise AssertionError("measured again")

    (tmp_path / machine.PACES).write_text(json.dumps({machine.pace_key("k"): {"pace": 2.5, "when": "2026-12-02"}}))
    assert machine.recorded_pace("k", never, tmp_path) == (2.5, "measured quiet on this machine on 2026-12-02")

    pace, when = machine.recorded_pace("other", lambda: 0.75, tmp_path)  # the load here decides which branch runs
    assert pace == 0.75
    recorded = json.loads((tmp_path / machine.PACES).read_text())
    assert recorded[machine.pace_key("k")]["pace"] == 2.5  # the other record kept
    if when == "measured now, recorded":
        assert recorded[machine.pace_key("other")]["pace"] == 0.75
        assert machine.recorded_pace("other", never, tmp_path)[0] == 0.75
    else:
        assert when.startswith("measured now while other processes used")
        assert when.endswith("; not recorded")
        assert machine.pace_key("other") not in recorded

    (tmp_path / machine.PACES).write_text("{not json")
    assert machine.recorded_pace("k", lambda: 1.25, tmp_path)[0] == 1.25
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert machine.recorded_pace("k", lambda: 1.5, blocked)[0] == 1.5  # its directory is a file: nothing written
    assert blocked.read_text() == ""
    assert not list(tmp_path.glob("*.tmp"))


def test_a_torchscript_load_bounds_both_onednn_kernel_caches_unless_the_user_set_them(tiny_bert_artifact: Path) -> None:
    """oneDNN and its PyTorch wrapper (ideep) each keep up to 1024 compiled kernels, one per shape, and a
    padding-free graph sees a new shape nearly every call: with ideep's unbounded, a process grew by 25 MB per 100
    calls over 600 (benchmarks/memory.py). A CPU load of ``model.pt`` bounds both before the first kernel is made,
    in the loading process's environment, and leaves a value the user set alone. Each case runs in a fresh
    process, as the caches read their bound once."""
    from torchship import machine

    script = (
        "import json, os, sys, torch, torchship\n"
        "p = torchship.load(sys.argv[1], format='torchscript')\n"
        "p.run(torch.ones(1, 9, dtype=torch.long) * 1000, torch.ones(1, 9, dtype=torch.long))\n"
        "print(json.dumps({k: os.environ.get(k) for k in sys.argv[2:]}))\n"
    )
    base = {k: v for k, v in os.environ.items() if k not in machine.ONEDNN_CACHES}
    for given, expected in (({}, [str(machine.ONEDNN_CACHE)] * 2), ({"LRU_CACHE_CAPACITY": "7"}, ["32", "7"])):
        run = subprocess.run(
            [sys.executable, "-c", script, str(tiny_bert_artifact), *machine.ONEDNN_CACHES],
            capture_output=True, text=True, env={**base, **given, machine.ONEDNN_ENV: "1"}, check=True,
        )  # fmt: skip
        seen = json.loads(run.stdout.strip().splitlines()[-1])
        assert [seen[k] for k in machine.ONEDNN_CACHES] == expected, (given, seen)
