"""``huggingface_hub.InferenceClient(model=URL)`` against a real torchship server: every task at ``POST /``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import torchship
from tests.conftest import TS, save_tiny
from tests.test_serve import serve_in_thread

HEADS = {
    "text-classification": ("BertForSequenceClassification", {"id2label": {0: "neg", 1: "pos", 2: "neutral"}}),
    "token-classification": (
        "BertForTokenClassification",
        {"id2label": {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}},
    ),
    "question-answering": ("BertForQuestionAnswering", {}),
}


@pytest.fixture(autouse=True)
def online_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub refuses every request, loopback included, while HF_HUB_OFFLINE is set; a client of a local
    server must unset it in its own process (the README says so). The model hub stays unreachable either way."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for task, (head, config) in HEADS.items():
        checkpoint = save_tiny(root / task, head, demo_dir, **config)
        options = torchship.ExportOptions(formats=TS, task=task, seq_lengths=(16, 64))
        out[task] = torchship.export(checkpoint, root / f"{task}-art", options)
    return out


@pytest.fixture
def client_of() -> Iterator:
    from huggingface_hub import InferenceClient

    with_servers = []

    def get(artifact: Path) -> InferenceClient:
        context = serve_in_thread(artifact)
        url = context.__enter__()
        with_servers.append(context)
        return InferenceClient(model=url)

    yield get
    for context in with_servers:
        context.__exit__(None, None, None)


TEXTS = ["Jim Henson was a puppeteer from New York.", "The muppets"]


def test_feature_extraction_and_sentence_similarity(client_of, demo_artifact: Path) -> None:
    client = client_of(demo_artifact)
    predictor = torchship.load(demo_artifact)
    got = client.feature_extraction(TEXTS[0])
    assert got.shape == (1, 384)
    np.testing.assert_allclose(got[0], predictor(TEXTS[0])[0], atol=1e-5)
    scores = client.sentence_similarity(TEXTS[0], other_sentences=[TEXTS[1], TEXTS[0]])
    want = predictor([TEXTS[0], TEXTS[1]])
    assert scores[0] == pytest.approx(float(want[0] @ want[1]), abs=1e-5)  # normalized embeddings: dot = cosine
    assert scores[1] == pytest.approx(1.0, abs=1e-5)


def test_fill_mask(client_of, tiny_mlm_artifact: Path) -> None:
    client = client_of(tiny_mlm_artifact)
    got = client.fill_mask("Jim Henson was a [MASK].", top_k=3)
    want = torchship.load(tiny_mlm_artifact)("Jim Henson was a [MASK].", top_k=3)
    assert [(g.token, g.token_str, g.sequence) for g in got] == [
        (w["token"], w["token_str"], w["sequence"]) for w in want
    ]
    assert [g.score for g in got] == pytest.approx([w["score"] for w in want], abs=1e-6)


def test_text_classification(client_of, artifacts: dict[str, Path]) -> None:
    client = client_of(artifacts["text-classification"])
    got = client.text_classification(TEXTS[0], top_k=3)
    want = torchship.load(artifacts["text-classification"])(TEXTS[0], top_k=3)
    assert [(g.label, round(g.score, 6)) for g in got] == [(w["label"], round(w["score"], 6)) for w in want]
    best = client.text_classification(TEXTS[1])  # no top_k: the best label, as a one-element list
    assert [g.label for g in best] == [torchship.load(artifacts["text-classification"])(TEXTS[1])["label"]]


def test_token_classification(client_of, artifacts: dict[str, Path]) -> None:
    client = client_of(artifacts["token-classification"])
    got = client.token_classification(TEXTS[0], aggregation_strategy="simple")
    want = torchship.load(artifacts["token-classification"])(TEXTS[0], aggregation_strategy="simple")
    assert [(g.entity_group, g.word, g.start, g.end) for g in got] == [
        (w["entity_group"], w["word"], w["start"], w["end"]) for w in want
    ]
    assert want, "the tiny random model must find some entity for this test to mean anything"


def test_question_answering(client_of, artifacts: dict[str, Path]) -> None:
    client = client_of(artifacts["question-answering"])
    context = "Jim Henson was a puppeteer who created the muppets in New York."
    got = client.question_answering(question="Who created the muppets?", context=context)
    want = torchship.load(artifacts["question-answering"])(question="Who created the muppets?", context=context)
    assert (got.answer, got.start, got.end) == (want["answer"], want["start"], want["end"])
    assert got.score == pytest.approx(want["score"], rel=1e-5)


def test_errors_reach_the_client_as_its_own_error(client_of, artifacts: dict[str, Path]) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    url = client_of(artifacts["text-classification"]).model
    r = httpx.post(url, json={"inputs": {"question": "q", "context": "c"}})
    assert r.status_code == 422
    assert r.json()["error_type"] == "Validation"
    assert "does not take" in r.json()["error"]
    r = httpx.post(f"{url}/invocations", json={"inputs": ["fine", ""]})
    assert r.status_code == 422
    assert "item 1 is an empty string" in r.json()["error"]
    from huggingface_hub import InferenceClient

    with pytest.raises(HfHubHTTPError, match="top_k 0|positive integer"):
        InferenceClient(model=url).text_classification("x", top_k=0)
    assert os.environ.get("HF_HUB_OFFLINE") is None
