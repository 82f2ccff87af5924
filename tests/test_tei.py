"""TEI's routes on the real MiniLM, against the Predictor and sentence-transformers: /embed (prompts, dimensions,
normalize), /embed_all, /similarity, /tokenize, /decode, /info, truncation and split client batches."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import torchship
from tests.conftest import TS
from tests.test_serve import serve_in_thread

PROMPTS = {"query": "query: ", "passage": "passage: "}
TEXTS = ["Jim Henson was a puppeteer", "Who was Jim Henson?", "Grüße aus Köln — naïve café"]
LONG = "the muppets " * 200


@pytest.fixture(scope="module")
def prompted_dir(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Path:
    """The real MiniLM, with sentence-transformers prompts (and a default one) added to its config."""
    checkpoint = tmp_path_factory.mktemp("prompted") / "minilm"
    shutil.copytree(demo_dir, checkpoint)
    config_file = checkpoint / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text())
    config.update(prompts=PROMPTS, default_prompt_name="query")
    config_file.write_text(json.dumps(config))
    return checkpoint


@pytest.fixture(scope="module")
def prompted(tmp_path_factory: pytest.TempPathFactory, prompted_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("prompted-art") / "minilm"
    return torchship.export(
        prompted_dir, out, torchship.ExportOptions(formats=TS, seq_lengths=(32, 128), progress=False)
    )


@pytest.fixture(scope="module")
def url(prompted: Path) -> Iterator[str]:
    with serve_in_thread(prompted, max_input_items=4, split_client_batches=True) as base:
        yield base


def test_prompts_and_dimensions_match_sentence_transformers(prompted: Path, prompted_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(prompted_dir), device="cpu")
    p = torchship.load(prompted)
    assert p.manifest.prompts == PROMPTS
    assert p.manifest.default_prompt_name == "query"
    np.testing.assert_allclose(p(TEXTS), reference.encode(TEXTS), atol=1e-5)  # the default prompt
    np.testing.assert_allclose(
        p(TEXTS, prompt_name="passage"), reference.encode(TEXTS, prompt_name="passage"), atol=1e-5
    )
    np.testing.assert_allclose(p(TEXTS, prompt=""), reference.encode(TEXTS, prompt=""), atol=1e-5)
    truncated = SentenceTransformer(str(prompted_dir), device="cpu", truncate_dim=64)
    want = truncated.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(p(TEXTS, dimensions=64), want, atol=1e-5)
    with pytest.raises(torchship.InputError, match="prompt_name 'nope' is not one of this model's prompts"):
        p(TEXTS, prompt_name="nope")
    with pytest.raises(torchship.InputError, match="dimensions 500 is over this model's 384"):
        p(TEXTS, dimensions=500)


def test_embed_as_tei(url: str, prompted: Path) -> None:
    p = torchship.load(prompted)
    r = httpx.post(f"{url}/embed", json={"inputs": TEXTS[:2], "prompt_name": "passage", "dimensions": 64})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json(), p(TEXTS[:2], prompt_name="passage", dimensions=64), atol=1e-6)
    assert np.allclose(np.linalg.norm(r.json(), axis=1), 1, atol=1e-5)  # re-normalized after the cut
    raw = httpx.post(f"{url}/embed", json={"inputs": TEXTS[0], "normalize": False}).json()
    np.testing.assert_allclose(raw, p([TEXTS[0]], normalize=False), atol=1e-5)
    assert np.linalg.norm(raw[0]) > 1.5  # MiniLM's mean-pooled vectors are long before its Normalize module
    r = httpx.post(f"{url}/embed", json={"inputs": "x", "dimensions": 385})
    assert r.status_code == 422
    assert r.json() == {"error": r.json()["error"], "error_type": "Validation"}
    assert "this model's embeddings have 384" in r.json()["error"]


def test_embed_all_and_similarity(url: str, prompted: Path) -> None:
    p = torchship.load(prompted)
    tokens = httpx.post(f"{url}/embed_all", json={"inputs": ["hello world", TEXTS[0]]}).json()
    for got, want in zip(tokens, p(["hello world", TEXTS[0]], output="tokens"), strict=True):
        assert np.asarray(got).shape == want.shape
        assert want.shape[1] == 384
        np.testing.assert_allclose(got, want, atol=1e-5)
    body = {"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:]}, "parameters": {"prompt_name": "passage"}}
    got = httpx.post(f"{url}/similarity", json=body).json()
    vectors = p(TEXTS, prompt_name="passage")
    np.testing.assert_allclose(got, vectors[1:] @ vectors[0], atol=1e-5)


def test_tokenize_and_decode_as_tei(url: str, prompted: Path) -> None:
    from tokenizers import Tokenizer

    text = TEXTS[2]
    tokens = httpx.post(f"{url}/tokenize", json={"inputs": text}).json()
    assert len(tokens) == 1
    first, *middle, last = tokens[0]
    assert first == {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert last["special"]
    assert last["text"] == "[SEP]"
    raw = text.encode()
    for token in middle:  # byte offsets into the UTF-8 text, as TEI reports them
        assert raw[token["start"] : token["stop"]].decode() == token["text"]
        assert not token["special"]
    tokenizer = Tokenizer.from_file(str(prompted / "tokenizer" / "tokenizer.json"))
    tokenizer.no_padding()  # MiniLM's tokenizer.json pads every text to 128; the server's does not
    assert [t["id"] for t in tokens[0]] == tokenizer.encode(text).ids
    bare = httpx.post(f"{url}/tokenize", json={"inputs": [text], "add_special_tokens": False}).json()
    assert [t["id"] for t in bare[0]] == [t["id"] for t in middle]
    prompted_tokens = httpx.post(f"{url}/tokenize", json={"inputs": "hi", "prompt_name": "query"}).json()[0]
    assert [t["text"] for t in prompted_tokens] == ["[CLS]", "query", ":", "hi", "[SEP]"]
    decoded = httpx.post(f"{url}/decode", json={"ids": [t["id"] for t in tokens[0]]}).json()
    assert decoded == [tokenizer.decode(tokenizer.encode(text).ids)]
    r = httpx.post(f"{url}/decode", json={"ids": [10**9]})
    assert r.status_code == 422
    assert "outside this tokenizer's vocabulary" in r.json()["error"]
    r = httpx.post(f"{url}/tokenize", json={"inputs": ["fine", " "]})
    assert r.status_code == 422
    assert "item 1 is an empty string" in r.json()["error"]


def test_info_as_tei(url: str) -> None:
    info = httpx.get(f"{url}/models/minilm/info").json()
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["served_model_name"] == "minilm"
    assert (info["max_input_length"], info["max_client_batch_size"], info["auto_truncate"]) == (128, 4, True)
    assert info["model_sha"]
    assert info["version"] == torchship.__version__
    assert httpx.get(f"{url}/info").json()["task"] == "feature-extraction"  # the root /info stays torchship's


def test_truncation_is_reported_and_refusal_is_a_choice(url: str, prompted: Path) -> None:
    p = torchship.load(prompted, truncation="warn")
    r = httpx.post(f"{url}/embed", json={"inputs": [TEXTS[0], LONG]})
    assert r.status_code == 200
    assert r.headers["x-truncated-inputs"] == "1"
    r = httpx.post(f"{url}/v1/embeddings", json={"input": [LONG, TEXTS[0], LONG]})
    assert r.status_code == 200
    assert r.headers["x-truncated-inputs"] == "0,2"
    assert "x-truncated-inputs" not in httpx.post(f"{url}/embed", json={"inputs": TEXTS[0]}).headers
    r = httpx.post(f"{url}/embed", json={"inputs": [LONG], "truncate": False})
    assert r.status_code == 413
    assert r.json()["error_type"] == "Validation"
    assert "exceed the longest traced length 128" in r.json()["error"]
    left = httpx.post(f"{url}/embed", json={"inputs": "start here " + LONG, "truncation_direction": "Left"}).json()
    right = httpx.post(f"{url}/embed", json={"inputs": "start here " + LONG}).json()
    assert not np.allclose(left, right, atol=1e-3)
    with pytest.warns(UserWarning, match="truncated 1 text"):
        want = p(["start here " + LONG], truncation_direction="left")
    np.testing.assert_allclose(left, want, atol=1e-5)


def test_client_batches_over_the_limit_are_split(url: str, prompted: Path) -> None:
    texts = [f"text number {i}" for i in range(11)]  # max_input_items is 4
    r = httpx.post(f"{url}/v1/embeddings", json={"input": texts})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, torchship.load(prompted)(texts), atol=1e-6)


def test_inference_client_sends_tei_parameters(url: str, prompted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import InferenceClient, constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # see tests/test_hf_inference.py
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    client = InferenceClient(model=url)
    got = client.feature_extraction(TEXTS[0], prompt_name="passage", dimensions=32, truncate=True)
    np.testing.assert_allclose(
        got, torchship.load(prompted)([TEXTS[0]], prompt_name="passage", dimensions=32), atol=1e-6
    )
    scores = client.sentence_similarity(TEXTS[0], other_sentences=TEXTS[1:])
    vectors = torchship.load(prompted)(TEXTS)  # the default prompt, as sentence-transformers applies it
    np.testing.assert_allclose(scores, vectors[1:] @ vectors[0], atol=1e-5)
