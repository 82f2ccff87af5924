"""Padding-free dense layers inside the exported graph (torchship/unpad.py): the default where it applies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import torchship
from tests.conftest import TS, save_tiny
from tests.test_architectures import _eager, _save
from torchship import unpad

TEXTS = ["Jim Henson was a puppeteer in New York.", "hi", "the muppets were filmed in london studios for many years"]


def test_padding_free_by_default_and_the_padded_layout_on_request(demo_dir: Path, tmp_path: Path) -> None:
    """The default exports BERT-layout encoders padding-free (the architecture matrix checks it on BERT, RoBERTa,
    XLM-R and ELECTRA, every task, every format); ``unpad=False`` keeps the padded layout. Both match the eager
    model on real positions."""
    src = _save(tmp_path / "model", "roberta", "text-classification", demo_dir)
    fields = {"formats": ("torchscript", "onnx"), "seq_lengths": (8, 32), "timing_budget_s": 0}  # routing: not here
    default = torchship.export(src, tmp_path / "default", torchship.ExportOptions(**fields))  # type: ignore[arg-type]
    padded = torchship.export(src, tmp_path / "padded", torchship.ExportOptions(**fields, unpad=False))  # type: ignore[arg-type]
    eager = _eager(src, "text-classification")
    for art, layout in ((default, "real tokens only"), (padded, "padded")):
        manifest = json.loads((art / "manifest.json").read_text())
        assert manifest["architecture"]["dense_layers"] == layout
        assert all(e["parity"]["passed"] for entries in manifest["formats"].values() for e in entries)
        if art is default:  # q, k and v are unbound, not iterated: the trace has nothing to warn of (REVISION 3+)
            assert "TracerWarning" not in {w["category"] for w in manifest["export"]["warnings"]}
        predictor = torchship.load(art)
        encoded = predictor.encode(TEXTS)
        inputs = predictor.engine.pad_rows(encoded, list(range(len(TEXTS))), 32)
        with torch.no_grad():
            want = eager(**{n: inputs[n] for n in predictor.input_names})["logits"].numpy()
        for fmt in ("torchscript", "onnx"):
            got = predictor.run(inputs["input_ids"], inputs["attention_mask"], format=fmt)["logits"]
            np.testing.assert_allclose(got, want, atol=1e-4, err_msg=f"{layout} {fmt}")
            # no real token at all: the padding-free graph gathers its padded layout from the real tokens
            # (unpad.padded_sources), so it runs the first position as one rather than on zero tokens
            empty = predictor.run(inputs["input_ids"], torch.zeros_like(inputs["attention_mask"]), format=fmt)
            assert empty["logits"].shape == got.shape
            assert torch.isfinite(empty["logits"]).all(), f"{layout} {fmt}"
            mask = inputs["attention_mask"].clone()
            mask[1] = 0  # a row of padding only beside real rows leaves theirs as they were
            beside = predictor.run(inputs["input_ids"], mask, format=fmt)["logits"]
            np.testing.assert_allclose(beside[[0, 2]], want[[0, 2]], atol=1e-4, err_msg=f"{layout} {fmt}")


def test_unpad_needs_formats_that_take_shapes_from_the_data() -> None:
    with pytest.raises(torchship.OptionsError, match="format 'neuron' compiles static shapes.*export without --unpad"):
        torchship.ExportOptions(formats=("neuron",), unpad=True)
    assert torchship.ExportOptions(formats=("onnx",), dtype="int8", unpad=True).unpad  # int8 quantizes MatMul
    with pytest.raises(torchship.OptionsError, match="unpad must be True, False or None"):
        torchship.ExportOptions(unpad="yes")  # type: ignore[arg-type]
    assert torchship.ExportOptions(formats=("neuron",)).unpad is None  # the default: where it applies


def test_dense_layers_run_on_real_tokens_only(demo_dir: Path) -> None:
    """FLOPs counted by torch: the linear layers' equal real tokens x weights; only attention sees the padding."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModel

    model = AutoModel.from_pretrained(demo_dir, attn_implementation="eager").eval()
    fast = unpad.unpadded(model).eval()
    ids = torch.randint(1000, 2000, (4, 64))
    mask = torch.zeros_like(ids)
    for row, n in enumerate((64, 9, 5, 30)):
        mask[row, :n] = 1
    real, (batch, seq) = int(mask.sum()), ids.shape
    c = model.config
    h, i, layers = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fast(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    linear = counts.get("aten.addmm", 0) + counts.get("aten.mm", 0)
    assert linear == 2 * real * (4 * h * h + 2 * h * i) * layers + 2 * batch * h * h  # + the pooler, on [CLS]
    assert counts["aten.bmm"] == 4 * batch * seq * seq * h * layers  # attention: the padded layout


def test_unpadded_aoti_matches_at_untraced_shapes(tiny_bert_dir: Path, tmp_path: Path, export_cache: Path) -> None:
    options = torchship.ExportOptions(formats=("aoti",), seq_lengths=(8, 32), unpad=True, cache_dir=export_cache)
    art = torchship.export(tiny_bert_dir, tmp_path / "art", options)
    (entry,) = json.loads((art / "manifest.json").read_text())["formats"]["aoti"]
    assert entry["parity"]["passed"] is True
    # the same checkpoint exported padded (TorchScript): the same embeddings
    padded = torchship.export(tiny_bert_dir, tmp_path / "padded", torchship.ExportOptions(formats=TS, unpad=False))
    np.testing.assert_allclose(torchship.load(art)(TEXTS), torchship.load(padded)(TEXTS), atol=1e-5)


def test_unpad_refuses_other_layouts(demo_dir: Path, tmp_path: Path) -> None:
    src = save_tiny(tmp_path / "m", "BertModel", demo_dir)
    from transformers import DistilBertConfig, DistilBertModel

    DistilBertModel(DistilBertConfig(vocab_size=30522, dim=32, n_layers=1, n_heads=2, hidden_dim=64)).save_pretrained(
        tmp_path / "distil"
    )
    for f in (src / "tokenizer.json", src / "tokenizer_config.json"):
        (tmp_path / "distil" / f.name).write_bytes(f.read_bytes())
    with pytest.raises(torchship.OptionsError, match="BERT-layout encoders .* not distilbert; export without it"):
        torchship.export(tmp_path / "distil", tmp_path / "out", torchship.ExportOptions(formats=TS, unpad=True))
    assert not (tmp_path / "out").exists()


def test_splade_head_runs_on_real_tokens_only() -> None:
    """SPLADE's masked-LM head (its decoder, hidden x vocabulary per token, is the model's largest product) runs on
    real tokens only as well as the dense layers, and pools the vector the padded graph pools."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import BertConfig, BertForMaskedLM

    from torchship.tasks.sparse_embedding import SpladeModel

    torch.manual_seed(0)
    c = BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    padded = SpladeModel(BertForMaskedLM(c).eval()).eval()
    fast = unpad.unpadded(padded).eval()
    assert (fast.real_tokens, padded.real_tokens) == (True, False)  # a rebuilt copy; the reference is untouched
    ids = torch.randint(5, 1000, (4, 24))
    mask = torch.zeros_like(ids)
    for row, n in enumerate((24, 9, 2, 17)):
        mask[row, :n] = 1
    real, (batch, seq) = int(mask.sum()), ids.shape
    with torch.no_grad():
        want = padded(input_ids=ids, attention_mask=mask)["sparse_embedding"]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        got = fast(input_ids=ids, attention_mask=mask)["sparse_embedding"]
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
    assert (want > 0).sum() > 0  # something to compare
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    linear = counts.get("aten.addmm", 0) + counts.get("aten.mm", 0)
    h, i, vocab = c.hidden_size, c.intermediate_size, c.vocab_size
    encoder = 2 * real * (4 * h * h + 2 * h * i) * c.num_hidden_layers
    head = 2 * real * (h * h + h * vocab)  # the head's transform and decoder, on real tokens
    assert linear == encoder + head
    assert counts["aten.bmm"] == 4 * batch * seq * seq * h * c.num_hidden_layers  # attention: the padded layout
