"""Tiny random-init configs for every registered architecture (as Optimum's tests build them).

All share the real all-MiniLM-L6-v2 WordPiece tokenizer, so special-token ids are set to match it.
"""

from __future__ import annotations

from typing import Any

SPECIAL = {"pad_token_id": 0, "bos_token_id": 101, "eos_token_id": 102}
COMMON = {
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 512,
    **SPECIAL,
}

# model_type -> (config class name, class-name prefix, config kwargs)
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "bert": ("BertConfig", "Bert", {**COMMON, "type_vocab_size": 2}),
    "distilbert": (
        "DistilBertConfig",
        "DistilBert",
        {"vocab_size": 30522, "dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "pad_token_id": 0},
    ),
    "roberta": ("RobertaConfig", "Roberta", {**COMMON, "max_position_embeddings": 514}),
    "xlm-roberta": ("XLMRobertaConfig", "XLMRoberta", {**COMMON, "max_position_embeddings": 514}),
    "albert": ("AlbertConfig", "Albert", {**COMMON, "embedding_size": 16, "type_vocab_size": 2}),
    "electra": ("ElectraConfig", "Electra", {**COMMON, "embedding_size": 16, "type_vocab_size": 2}),
    "mpnet": ("MPNetConfig", "MPNet", {**COMMON, "max_position_embeddings": 514}),
    "deberta-v2": (
        "DebertaV2Config",
        "DebertaV2",
        {
            **COMMON,
            "type_vocab_size": 0,
            "relative_attention": True,
            "pos_att_type": ["p2c", "c2p"],
            "position_buckets": 16,
            "position_biased_input": False,
        },
    ),
    "modernbert": (
        "ModernBertConfig",
        "ModernBert",
        {**COMMON, "cls_token_id": 101, "sep_token_id": 102, "global_attn_every_n_layers": 2, "local_attention": 8},
    ),
}

TASK_SUFFIX = {
    "feature-extraction": "Model",
    "fill-mask": "ForMaskedLM",
    "text-classification": "ForSequenceClassification",
    "token-classification": "ForTokenClassification",
    "question-answering": "ForQuestionAnswering",
    "sparse-embedding": "ForMaskedLM",  # SPLADE pooling on a masked LM
}

NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
