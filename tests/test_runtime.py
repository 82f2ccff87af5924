"""Runtime: sentence-transformers parity on real text, raw outputs, no transformers, bad input, checksums."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import torchship
from tests.conftest import copy_artifact, corpus_texts


@pytest.fixture(scope="module")
def demo_predictor(demo_artifact: Path) -> torchship.Predictor:
    return torchship.load(demo_artifact)


def test_embeddings_match_sentence_transformers_on_real_text(demo_predictor, demo_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    texts = corpus_texts()
    by_length = sorted(texts, key=len)
    sample = by_length[::12] + by_length[-8:]  # every length range, plus the longest (truncated at 256)
    model = SentenceTransformer(str(demo_dir), device="cpu")
    want = model.encode(sample, batch_size=16, convert_to_numpy=True)
    with pytest.warns(UserWarning, match="truncated"):
        got = demo_predictor(sample)
    assert got.shape == want.shape == (len(sample), 384)
    assert got.dtype == np.float32
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.99999, f"worst cosine {cosine.min()} at {sample[int(cosine.argmin())][:60]!r}"


@pytest.mark.parametrize(("mode", "theirs"), [("cls", "cls"), ("mean", "mean"), ("max", "max"),
                                              ("mean_sqrt_len", "mean_sqrt_len_tokens")])  # fmt: skip
def test_pooling_modes_match_sentence_transformers_pooling(mode: str, theirs: str) -> None:
    """Every pooling mode, in numpy, against sentence-transformers' own Pooling module, on rows with padding
    (negative values too, so max pooling must skip the padded positions rather than lose to zeros)."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    from torchship.tasks.feature_extraction import pool

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, 16, generator=generator) - 2
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] + [0] * 6])
    want = Pooling(16, pooling_mode=theirs)({"token_embeddings": hidden, "attention_mask": mask})["sentence_embedding"]
    got = pool(hidden, mask, mode=mode, normalize=False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    normalized = pool(hidden, mask, mode=mode, normalize=True)
    torch.testing.assert_close(normalized, torch.nn.functional.normalize(want), rtol=1e-5, atol=1e-6)


def test_results_come_back_in_input_order(demo_predictor) -> None:
    texts = ["short", "a much longer sentence about puppets and television studios in new york", "mid length text"]
    together = demo_predictor(texts)
    one_by_one = np.stack([demo_predictor([t])[0] for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_text_pairs_use_segment_ids(demo_predictor) -> None:
    pair = demo_predictor([("Who was Jim Henson ?", "Jim Henson was a puppeteer")])
    joined = demo_predictor(["Who was Jim Henson ? Jim Henson was a puppeteer"])
    assert pair.shape == (1, 384)
    assert not np.allclose(pair, joined, atol=1e-3)


def test_run_returns_named_raw_outputs_at_untraced_shapes(tiny_bert_dir: Path, tiny_bert_artifact: Path) -> None:
    from transformers import AutoModel

    predictor = torchship.load(tiny_bert_artifact)
    eager = AutoModel.from_pretrained(tiny_bert_dir).eval()
    torch.manual_seed(1)
    for batch, seq in [(1, 5), (3, 13), (7, 30)]:
        ids = torch.randint(1000, 5000, (batch, seq))
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[0, seq // 2 :] = 0  # padding inside the batch
        types = torch.zeros(batch, seq, dtype=torch.long)
        types[:, seq // 3 :] = 1
        got = predictor.run(input_ids=ids, attention_mask=mask, token_type_ids=types)
        with torch.inference_mode():
            want = eager(input_ids=ids, attention_mask=mask, token_type_ids=types)
        assert list(got) == ["last_hidden_state", "pooler_output"]
        assert got["last_hidden_state"].shape == (batch, seq, 32)
        real = mask.bool()
        assert (got["last_hidden_state"] - want.last_hidden_state)[real].abs().max() < 1e-4
        assert (got["pooler_output"] - want.pooler_output).abs().max() < 1e-4
    assert predictor.counters.padded_tokens > predictor.counters.real_tokens > 0


def test_run_accepts_numpy_and_lists_and_defaults_the_mask(tiny_bert_artifact: Path) -> None:
    predictor = torchship.load(tiny_bert_artifact)
    ids = [[101, 2000, 2001, 102]]
    a = predictor.run(ids)["pooler_output"]
    b = predictor.run(np.asarray(ids), attention_mask=np.ones((1, 4), dtype=np.int64))["pooler_output"]
    assert torch.equal(a, b)


def test_run_rejects_bad_shapes(tiny_bert_artifact: Path) -> None:
    predictor = torchship.load(tiny_bert_artifact)
    with pytest.raises(torchship.SequenceTooLongError, match="exceeds the longest traced length 32"):
        predictor.run(torch.ones(1, 33, dtype=torch.long))
    with pytest.raises(torchship.InputError, match="must match"):
        predictor.run(torch.ones(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(torchship.InputError, match="must hold integers"):
        predictor.run(torch.ones(1, 4))
    with pytest.raises(torchship.InputError, match="rectangular"):
        predictor.run([[1, 2, 3], [1, 2]])


def test_runtime_never_imports_transformers(demo_artifact: Path) -> None:
    code = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("transformers is blocked in this test")
sys.meta_path.insert(0, Block())
import torchship
p = torchship.load({str(demo_artifact)!r})
out = p(["hello world", "a second text"])
assert out.shape == (2, 384), out.shape
p.run(input_ids=[[101, 7592, 102]])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("transformers", "sentence_transformers"))
assert not heavy, heavy
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([], "the input list is empty"),
        ([""], "item 0 is an empty string"),
        (["ok", "   "], "item 1 is an empty string"),
        (["ok", 3], "item 1 is int"),
        ([None], "item 0 is NoneType"),
        (42, "expected a string or a list of strings"),
        ([("question", "")], "text pair with an empty side"),
    ],
)
def test_bad_text_input_is_a_clear_error(demo_predictor, texts, message: str) -> None:
    with pytest.raises(torchship.InputError, match=message):
        demo_predictor(texts)


def test_too_long_text_truncates_with_warning_or_refuses(demo_artifact: Path) -> None:
    long_text = "puppet " * 400
    with pytest.warns(UserWarning, match="truncated 1 text"):
        out = torchship.load(demo_artifact)([long_text, "short"])
    assert out.shape == (2, 384)
    strict = torchship.load(demo_artifact, truncation="error")
    with pytest.raises(torchship.SequenceTooLongError, match="exceed the longest traced length 256"):
        strict([long_text])


def test_missing_file_is_a_clear_error(demo_artifact: Path, tmp_path: Path) -> None:
    art = copy_artifact(demo_artifact, tmp_path / "a")
    (art / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(torchship.MissingFileError, match="tokenizer/tokenizer.json is missing"):
        torchship.load(art)


def test_tampered_file_is_a_clear_error(tiny_bert_artifact: Path, tmp_path: Path) -> None:
    art = copy_artifact(tiny_bert_artifact, tmp_path / "a")
    data = bytearray((art / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (art / "model.pt").write_bytes(bytes(data))
    with pytest.raises(torchship.ChecksumError, match="model.pt .* modified or corrupted"):
        torchship.load(art)


def test_directory_that_is_not_an_artifact(tmp_path: Path) -> None:
    with pytest.raises(torchship.NotAnArtifactError, match="has no manifest.json"):
        torchship.load(tmp_path)
    with pytest.raises(torchship.NotAnArtifactError, match="not a directory"):
        torchship.load(tmp_path / "nope")
    (tmp_path / "manifest.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(torchship.ArtifactError, match="schema_version 99"):
        torchship.load(tmp_path)


def test_load_rejects_unknown_options(tiny_bert_artifact: Path) -> None:
    with pytest.raises(torchship.InputError, match="truncaton"):
        torchship.load(tiny_bert_artifact, truncaton="error")
    with pytest.raises(torchship.OptionsError, match="truncation 'never'"):
        torchship.load(tiny_bert_artifact, truncation="never")


def test_fill_mask_is_pipeline_shaped(tiny_mlm_dir: Path, tiny_mlm_artifact: Path) -> None:
    from transformers import pipeline

    predictor = torchship.load(tiny_mlm_artifact)
    text = "Jim Henson was a [MASK] in new york."
    got = predictor(text, top_k=3)
    want = pipeline("fill-mask", model=str(tiny_mlm_dir), device="cpu")(text, top_k=3)
    assert [r["token"] for r in got] == [r["token"] for r in want]
    assert [r["token_str"] for r in got] == [r["token_str"] for r in want]
    assert [r["sequence"] for r in got] == [r["sequence"] for r in want]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], atol=1e-5)
    with pytest.raises(torchship.InputError, match="top_k must be a positive integer"):
        predictor(text, top_k=0)
    with pytest.raises(torchship.InputError, match="top_k must be a positive integer"):
        predictor(text, top_k=2.5)
    assert [r["token"] for r in predictor(text, top_k=3.0)] == [r["token"] for r in got]  # JSON's 3.0 is 3
    everything = predictor("[MASK]", top_k=10**9)  # more than the vocabulary: every token, once, best first
    assert len(everything) == 30522
    assert [r["score"] for r in everything] == sorted((r["score"] for r in everything), reverse=True)
