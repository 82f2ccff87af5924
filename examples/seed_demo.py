"""The seed's example ("Export to TorchScript", transformers docs), run correctly through a torchship artifact.

Usage: python examples/seed_demo.py ARTIFACT_DIR

1. tokenizes the seed's Jim Henson sentence pair with the artifact's own tokenizer and masks token 8,
   with real segment ids *and* an attention mask;
2. runs it the seed's way, ``torch.jit.load(path)(*dummy_input)``, and through ``Predictor.run``;
3. measures both against the eager transformers model, and shows what the seed's positional call
   (segment ids landing in ``attention_mask``) silently does;
4. embeds the two sentences with the Predictor.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

import torchship


def main(artifact: Path) -> int:
    manifest = json.loads((artifact / "manifest.json").read_text())
    tokenizer = Tokenizer.from_file(str(artifact / "tokenizer" / "tokenizer.json"))
    tokenizer.no_padding()
    enc = tokenizer.encode("Who was Jim Henson ?", "Jim Henson was a puppeteer")
    tokens = list(enc.tokens)
    masked_index = 8
    tokens[masked_index] = "[MASK]"
    ids = [tokenizer.token_to_id(t) for t in tokens]
    inputs = {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "token_type_ids": torch.tensor([enc.type_ids]),
    }
    print("tokens         ", " ".join(tokens))
    print("token_type_ids ", enc.type_ids)
    print("attention_mask ", inputs["attention_mask"][0].tolist())

    # The seed's call: torch.jit.load(path)(*dummy_input), inputs in the manifest's positional order.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded_model = torch.jit.load(str(artifact / "model.pt"))
    dummy_input = [inputs[name] for name in manifest["inputs"]]
    longest = manifest["max_length"]
    padded = [torch.nn.functional.pad(x, (0, longest - x.shape[1])) for x in dummy_input]  # forward is traced at max
    all_encoder_layers, pooled_output = loaded_model(*padded)
    print(
        f"\ntorch.jit.load(model.pt)(*dummy_input) -> last_hidden_state {tuple(all_encoder_layers.shape)}, "
        f"pooler_output {tuple(pooled_output.shape)}"
    )

    predictor = torchship.load(artifact)
    outputs = predictor.run(**inputs)
    for name, value in outputs.items():
        print(f"Predictor.run -> {name:18} {tuple(value.shape)}  first values {value.flatten()[:4].tolist()}")

    # transformers imports torchao where it is installed (the int8 extra); torchao logs kernels for other platforms
    # that it does not load, and torch's pytree that torchao registers enums it no longer needs to
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    eager = AutoModel.from_pretrained(manifest["source"]["path"]).eval()
    with torch.inference_mode():
        reference = eager(**inputs)
        seed_bug = eager(inputs["input_ids"], inputs["token_type_ids"])  # the seed's positional call
    print("\nparity against the eager transformers model (max abs diff):")
    for name, value in outputs.items():
        diff = float((value - reference[name]).abs().max())
        jit_value = all_encoder_layers[:, : len(ids)] if name == "last_hidden_state" else pooled_output
        jit_diff = float((jit_value - reference[name]).abs().max())
        print(f"  {name:18} Predictor.run {diff:.2e}   torch.jit.load {jit_diff:.2e}   (atol 1e-4)")
    bug = float((seed_bug.last_hidden_state - reference.last_hidden_state).abs().max())
    print(f"  the seed's model(tokens, segments) puts segment ids in attention_mask: max abs diff {bug:.2f}")

    sentences = ["Who was Jim Henson?", "Jim Henson was a puppeteer"]
    embeddings = predictor(sentences)
    cosine = float(np.dot(embeddings[0], embeddings[1]))
    print(f"\nsentence embeddings {embeddings.shape} {embeddings.dtype}, cosine(q, a) = {cosine:.4f}")
    worst = max(diff for e in manifest["formats"]["torchscript"] for diff in e["parity"]["max_abs_diff"].values())
    print(f"export-time parity at untraced shapes, worst over {len(predictor.buckets)} buckets: {worst:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "artifacts/minilm")))
