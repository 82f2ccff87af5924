"""Property: whatever a caller passes, every task either answers or raises torchship's own error, never a crash."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchship
from tests.conftest import TS, save_tiny

HEADS = {
    "feature-extraction": "BertModel",
    "fill-mask": "BertForMaskedLM",
    "text-classification": "BertForSequenceClassification",
    "token-classification": "BertForTokenClassification",
    "question-answering": "BertForQuestionAnswering",
}


@pytest.fixture(scope="module")
def predictors(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> dict[str, torchship.Predictor]:
    root = tmp_path_factory.mktemp("fuzz")
    out = {}
    for task, head in HEADS.items():
        checkpoint = save_tiny(root / task, head, demo_dir)
        options = torchship.ExportOptions(formats=TS, task=task, seq_lengths=(8, 32), progress=False)
        out[task] = torchship.load(torchship.export(checkpoint, root / f"{task}-artifact", options))
    return out


TEXT = st.text(max_size=200)  # any unicode, empty and blank included; some run past the longest bucket
ITEM = st.one_of(TEXT, st.tuples(TEXT, TEXT), st.integers(), st.none(), st.lists(TEXT, max_size=2))
INPUTS = st.one_of(TEXT, st.lists(ITEM, max_size=5))
VALUE = st.one_of(
    st.integers(-3, 10**6), st.floats(), st.text(max_size=8), st.none(), st.sampled_from(["simple", "first", "max"])
)
OPTION = st.sampled_from(["top_k", "aggregation_strategy", "doc_stride", "max_answer_len", "unknown"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(task=st.sampled_from(sorted(HEADS)), a=INPUTS, b=INPUTS, options=st.dictionaries(OPTION, VALUE, max_size=3))
def test_any_input_is_answered_or_refused_with_a_torchship_error(
    predictors: dict[str, torchship.Predictor], task: str, a: object, b: object, options: dict[str, object]
) -> None:
    predictor = predictors[task]
    refused = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # truncation of texts past the longest bucket
        try:
            if task == "question-answering":
                predictor(question=a, context=b, **options)
            else:
                predictor(a, **options)
        except torchship.InputError as e:  # bad input: refused, naming the problem; anything else fails the test
            refused = str(e)
    assert refused is None or len(refused) > 20, refused
