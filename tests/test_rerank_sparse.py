"""Reranking (cross-encoders) and SPLADE sparse embeddings: parity with sentence-transformers' ``CrossEncoder``
and ``SparseEncoder`` on tiny random-init models, in Python and through a real server's TEI and Cohere routes."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import torchship
from tests.conftest import TS, save_tiny
from tests.test_serve import serve_in_thread
from torchship.errors import InputError, TaskMismatchError

QUERY = "Who made the Muppets?"
DOCS = [
    "Jim Henson was a puppeteer from New York.",
    "The Muppets were created by Jim Henson in 1955.",
    "Paris is the capital of France.",
    "Kermit the Frog is a Muppet character.",
]


@pytest.fixture(scope="module")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    # a wider init than the default spreads the scores, so an ordering mistake cannot hide behind ties
    return save_tiny(
        tmp_path_factory.mktemp("ce"), "BertForSequenceClassification", demo_dir, num_labels=1, initializer_range=0.5
    )


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory, cross_encoder_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("ce-art") / "reranker"
    return torchship.export(
        cross_encoder_dir, out, torchship.ExportOptions(formats=TS, seq_lengths=(16, 64), progress=False)
    )


def _splade(root: Path, demo_dir: Path, strategy: str) -> Path:
    """A tiny masked LM saved as a sentence-transformers SparseEncoder (MLM + SpladePooling)."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sparse_encoder.modules import SpladePooling

    mlm = save_tiny(root / "mlm", "BertForMaskedLM", demo_dir, initializer_range=0.5)
    encoder = SparseEncoder(
        modules=[Transformer(str(mlm), transformer_task="fill-mask"), SpladePooling(strategy)], device="cpu"
    )
    encoder.save(str(root / "splade"))
    return root / "splade"


@pytest.fixture(scope="module")
def splade_dir(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    return _splade(tmp_path_factory.mktemp("splade"), demo_dir, "max")


@pytest.fixture(scope="module")
def splade(tmp_path_factory: pytest.TempPathFactory, splade_dir: Path) -> Path:
    options = torchship.ExportOptions(
        task="sparse-embedding", seq_lengths=(16, 64), formats=("torchscript", "onnx"), progress=False
    )
    return torchship.export(splade_dir, tmp_path_factory.mktemp("splade-art") / "splade", options)


# ---- reranking --------------------------------------------------------------------------------------------------


def test_rank_and_scores_match_cross_encoder(cross_encoder: Path, cross_encoder_dir: Path) -> None:
    from sentence_transformers import CrossEncoder

    reference = CrossEncoder(str(cross_encoder_dir), device="cpu")
    p = torchship.load(cross_encoder)
    want = reference.predict([(QUERY, d) for d in DOCS])
    got = [r["score"] for r in p([(QUERY, d) for d in DOCS])]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.ptp(want) > 1e-3, "scores too close to tell an ordering apart; widen the init"
    ranked = p.rank(QUERY, DOCS, return_documents=True)
    expected = reference.rank(QUERY, DOCS, return_documents=True)
    assert [r["corpus_id"] for r in ranked] == [r["corpus_id"] for r in expected]
    assert [r["text"] for r in ranked] == [r["text"] for r in expected]
    np.testing.assert_allclose([r["score"] for r in ranked], [r["score"] for r in expected], atol=1e-5)
    assert [r["corpus_id"] for r in p.rank(QUERY, DOCS, top_k=2)] == [r["corpus_id"] for r in expected[:2]]
    raw = p.rank(QUERY, DOCS, raw_scores=True)
    np.testing.assert_allclose(
        sorted((r["score"] for r in raw), reverse=True), sorted(np.log(want / (1 - want)), reverse=True), atol=1e-4
    )


def test_rank_refuses_what_is_not_a_cross_encoder(demo_artifact: Path, cross_encoder: Path) -> None:
    with pytest.raises(TaskMismatchError, match="reranking needs a cross-encoder"):
        torchship.load(demo_artifact).rank(QUERY, DOCS)
    with pytest.raises(InputError, match="non-empty list"):
        torchship.load(cross_encoder).rank(QUERY, [])


@pytest.fixture(scope="module")
def rerank_url(cross_encoder: Path) -> Iterator[str]:
    with serve_in_thread(cross_encoder, max_batch_size=3) as url:
        yield url


def test_tei_and_cohere_rerank_routes(rerank_url: str, cross_encoder: Path) -> None:
    want = torchship.load(cross_encoder).rank(QUERY, DOCS)
    r = httpx.post(f"{rerank_url}/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True})
    assert r.status_code == 200, r.text
    assert [x["index"] for x in r.json()] == [w["corpus_id"] for w in want]
    assert [x["text"] for x in r.json()] == [DOCS[w["corpus_id"]] for w in want]
    np.testing.assert_allclose([x["score"] for x in r.json()], [w["score"] for w in want], atol=1e-6)
    raw = httpx.post(f"{rerank_url}/rerank", json={"query": QUERY, "texts": DOCS, "raw_scores": True}).json()
    assert min(x["score"] for x in raw) < 0 or max(x["score"] for x in raw) > 1  # logits, not probabilities
    for version in ("v1", "v2"):
        body = {"model": "any", "query": QUERY, "documents": [DOCS[0], {"text": DOCS[1]}, *DOCS[2:]], "top_n": 2,
                "return_documents": True}  # fmt: skip
        r = httpx.post(f"{rerank_url}/{version}/rerank", json=body)
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["index"] for x in results] == [w["corpus_id"] for w in want[:2]]
        assert [x["document"]["text"] for x in results] == [DOCS[w["corpus_id"]] for w in want[:2]]
        np.testing.assert_allclose([x["relevance_score"] for x in results], [w["score"] for w in want[:2]], atol=1e-6)
        assert r.json()["id"]
        assert "meta" in r.json()
    r = httpx.post(f"{rerank_url}/v2/rerank", json={"query": QUERY, "documents": []})
    assert r.status_code == 422
    assert "documents is empty" in r.json()["error"]["message"]
    r = httpx.post(f"{rerank_url}/rerank", json={"query": QUERY, "texts": ["x"], "prompt_name": "query"})
    assert r.status_code == 422
    assert r.json()["error_type"] == "Validation"


def test_tei_predict_classifies_texts_and_pairs(rerank_url: str, cross_encoder: Path) -> None:
    p = torchship.load(cross_encoder)
    url = f"{rerank_url}/models/reranker/predict"
    single = httpx.post(url, json={"inputs": [QUERY, DOCS[0]]}).json()
    assert single == [{"score": pytest.approx(p((QUERY, DOCS[0]))["score"], abs=1e-6), "label": "LABEL_0"}]
    batch = httpx.post(url, json={"inputs": [[DOCS[0]], [QUERY, DOCS[1]]], "raw_scores": True}).json()
    assert len(batch) == 2
    assert all(len(x) == 1 for x in batch)
    want = p([DOCS[0], (QUERY, DOCS[1])], function_to_apply="none")
    np.testing.assert_allclose([x[0]["score"] for x in batch], [w["score"] for w in want], atol=1e-5)
    r = httpx.post(url, json={"inputs": ["a", "b", "c"]})
    assert r.status_code == 422
    assert "batch as [[a], [b, c]" in r.json()["error"]


def test_rerank_on_an_embedding_model_is_a_clear_400(demo_artifact: Path) -> None:
    with serve_in_thread(demo_artifact) as url:
        r = httpx.post(f"{url}/rerank", json={"query": "q", "texts": ["a"]})
        assert r.status_code == 400
        assert "needs a cross-encoder" in r.json()["error"]
        r = httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": ["a"]})
        assert r.status_code == 400
        assert "needs a cross-encoder" in r.json()["error"]["message"]
        assert "/v1/rerank" not in httpx.get(f"{url}/openapi.json").json()["paths"]


# ---- SPLADE ---------------------------------------------------------------------------------------------------


def _dense(result: dict[str, np.ndarray], width: int) -> np.ndarray:
    out = np.zeros(width, dtype=np.float32)
    out[result["indices"]] = result["values"]
    return out


TEXTS = ["Jim Henson was a puppeteer", "The Muppets " * 12, "a"]  # within the longest bucket, 64


def test_splade_matches_sparse_encoder_in_every_format(splade: Path, splade_dir: Path) -> None:
    from sentence_transformers import SparseEncoder

    reference = SparseEncoder(str(splade_dir), device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's sparse tensors warn that their support is in beta
        want = reference.encode(TEXTS, convert_to_tensor=True).to_dense().numpy()
    manifest = torchship.load(splade).manifest
    assert manifest.outputs == ["sparse_embedding"]
    assert manifest.output_axes["sparse_embedding"] == ["batch", None]  # the logits never leave the graph
    for fmt in ("torchscript", "onnx"):
        got = torchship.load(splade, format=fmt)(TEXTS)
        for g, w in zip(got, want, strict=True):
            assert g["indices"].dtype == np.int64
            assert np.all(np.diff(g["indices"]) > 0)
            np.testing.assert_allclose(_dense(g, w.shape[0]), w, atol=1e-4)
    one = torchship.load(splade)(TEXTS[0], top_k=5)
    assert len(one["indices"]) == 5
    np.testing.assert_allclose(np.sort(one["values"]), np.sort(want[0])[-5:], atol=1e-4)
    above = torchship.load(splade)(TEXTS[0], threshold=float(np.median(want[0][want[0] > 0])))
    assert 0 < len(above["indices"]) < (want[0] > 0).sum()


def test_splade_padding_free_counts_only_attention_padding(splade: Path) -> None:
    """Padding-free SPLADE runs its dense layers and its masked-LM head on real tokens: what a micro-batch
    executes beyond its unpadded FLOPs is attention over the padded positions, nothing else."""
    import json

    from torchship.flops import layer_flops

    predictor = torchship.load(splade, format="torchscript")  # static buckets: rows padded past their length
    assert predictor.manifest.architecture["dense_layers"] == "real tokens only"
    config = json.loads((splade / "config.json").read_text())
    seen = []
    predictor.engine.hooks.append(seen.append)
    predictor(["a short text", "one that is a little longer than the first one of these", "x y z"])

    def attention(seq: int) -> int:
        return layer_flops(config, 1, seq)[1]

    padded = [e for e in seen if any(n < e.padded_length for n in e.lengths)]
    assert padded  # some rows ran padded, so the assertion below can fail
    for e in seen:
        assert e.flops_executed - e.flops_unpadded == sum(attention(e.padded_length) - attention(n) for n in e.lengths)


def test_splade_sum_pooling(tmp_path: Path, demo_dir: Path) -> None:
    from sentence_transformers import SparseEncoder

    checkpoint = _splade(tmp_path, demo_dir, "sum")
    options = torchship.ExportOptions(formats=TS, task="sparse-embedding", seq_lengths=(16, 64), progress=False)
    p = torchship.load(torchship.export(checkpoint, tmp_path / "art", options))
    assert p.manifest.pooling["pooling_strategy"] == "sum"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = SparseEncoder(str(checkpoint), device="cpu").encode(TEXTS, convert_to_tensor=True).to_dense().numpy()
    for g, w in zip(p(TEXTS), want, strict=True):
        np.testing.assert_allclose(_dense(g, w.shape[0]), w, rtol=1e-5, atol=1e-3)


def test_embed_sparse_route(splade: Path) -> None:
    p = torchship.load(splade)
    with serve_in_thread(splade) as url:
        r = httpx.post(f"{url}/embed_sparse", json={"inputs": TEXTS[:2]})
        assert r.status_code == 200, r.text
        for got, want in zip(r.json(), p(TEXTS[:2]), strict=True):
            assert [x["index"] for x in got] == want["indices"].tolist()
            np.testing.assert_allclose([x["value"] for x in got], want["values"], atol=1e-6)
        top = httpx.post(f"{url}/embed_sparse", json={"inputs": "hello", "top_k": 3}).json()
        assert len(top) == 1
        assert len(top[0]) == 3
        assert (
            httpx.post(url, json={"inputs": "hello"}).json()
            == httpx.post(f"{url}/embed_sparse", json={"inputs": "hello"}).json()
        )  # POST / dispatches by the artifact's task, as TEI does
        r = httpx.post(f"{url}/embed", json={"inputs": "hello"})
        assert r.status_code == 400
        assert "serves sparse-embedding" in r.json()["error"]
