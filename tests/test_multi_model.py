"""Several models in one server: routing by the OpenAI and Cohere ``model`` field and by /models/NAME/ prefixes,
discovery at /v1/models, a model label on every metric, and the CLI's names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import torchship
from tests.test_serve import serve_in_thread
from torchship.cli import main


@pytest.fixture(scope="module")
def url(demo_artifact: Path, tiny_bert_artifact: Path, tiny_mlm_artifact: Path) -> Iterator[str]:
    with serve_in_thread({"minilm": demo_artifact, "tiny": tiny_bert_artifact, "mlm": tiny_mlm_artifact}) as base:
        yield base


def test_openai_client_picks_the_model_by_name(url: str, demo_artifact: Path, tiny_bert_artifact: Path) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    texts = ["Jim Henson was a puppeteer", "hello"]
    for name, artifact in (("minilm", demo_artifact), ("tiny", tiny_bert_artifact)):
        response = client.embeddings.create(input=texts, model=name)
        assert response.model == name
        got = np.array([d.embedding for d in response.data], dtype=np.float32)
        np.testing.assert_allclose(got, torchship.load(artifact)(texts), atol=1e-6)
    assert len(client.embeddings.create(input="x", model="minilm").data[0].embedding) == 384
    assert len(client.embeddings.create(input="x", model="tiny").data[0].embedding) == 32
    with pytest.raises(openai.NotFoundError, match="'nope' is not served here; served: minilm, tiny, mlm"):
        client.embeddings.create(input="x", model="nope")
    with pytest.raises(openai.BadRequestError, match="serves fill-mask, not embeddings"):
        client.embeddings.create(input="x", model="mlm")
    assert [m.id for m in client.models.list()] == ["minilm", "tiny", "mlm"]


def test_routes_under_each_models_prefix(url: str, demo_artifact: Path, tiny_mlm_artifact: Path) -> None:
    from huggingface_hub import InferenceClient

    got = httpx.post(f"{url}/models/tiny/embed", json={"inputs": ["a b"], "normalize": False}).json()
    want = httpx.post(f"{url}/v1/embeddings", json={"input": ["a b"], "model": "tiny"}).json()["data"][0]["embedding"]
    np.testing.assert_allclose(got[0], want, atol=1e-6)  # the tiny model does not normalize, so neither do they
    assert httpx.post(f"{url}/embed", json={"inputs": "a"}).status_code == 404  # no root routes with several
    r = httpx.post(f"{url}/predict", json={"inputs": "Jim Henson was a [MASK]."})
    assert r.status_code == 422
    assert "pass model: one of minilm, tiny, mlm" in r.json()["error"]["message"]
    r = httpx.post(f"{url}/predict", json={"inputs": "Jim Henson was a [MASK].", "model": "mlm"})
    want_mask = torchship.load(tiny_mlm_artifact)("Jim Henson was a [MASK].")
    assert [o["token"] for o in r.json()["outputs"]] == [w["token"] for w in want_mask]
    with pytest.MonkeyPatch.context() as mp:
        from huggingface_hub import constants

        mp.delenv("HF_HUB_OFFLINE", raising=False)
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        vector = InferenceClient(model=f"{url}/models/minilm").feature_extraction("hello")
    np.testing.assert_allclose(vector[0], torchship.load(demo_artifact)(["hello"])[0], atol=1e-6)
    info = httpx.get(f"{url}/info").json()
    assert [m["name"] for m in info["models"]] == ["minilm", "tiny", "mlm"]
    assert httpx.get(f"{url}/models/mlm/info").json()["model_type"] == {"classifier": {"id2label": {}, "label2id": {}}}


def test_every_metric_carries_the_model(url: str) -> None:
    httpx.post(f"{url}/v1/embeddings", json={"input": ["x"], "model": "minilm"})
    httpx.post(f"{url}/v1/embeddings", json={"input": ["x"], "model": "tiny"})
    metrics = httpx.get(f"{url}/metrics").text
    for model in ("minilm", "tiny"):
        assert f'torchship_tokens_total{{kind="real",model="{model}"}}' in metrics
        assert f'torchship_requests_total{{endpoint="/v1/embeddings",model="{model}",status="200"}}' in metrics
        assert f'torchship_batch_size_count{{model="{model}"}}' in metrics


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve"], "serve needs an artifact"),
        (["serve", "--model", "minilm"], "is not NAME=PATH"),
        (["serve", "--model", "a/b=./x"], "is not usable in a URL path"),
        (["serve", "--model", "x=./a", "--model", "x=./b"], "both named 'x'"),
    ],
)
def test_cli_names_are_checked(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) != 0
    assert message in capsys.readouterr().err
