"""Tiny configs for the common model contract: every registered model needs one (a meta-test checks)."""

TINY_VOCAB = {"n_items": 30, "n_cates": 8, "n_behaviors": 4}

TINY_CONFIGS: dict[str, dict] = {
    "sumpool": {"embedding_dim": 4, "dnn_hidden": (16, 8)},
    "din": {"embedding_dim": 4, "attention_hidden": (8, 4), "dnn_hidden": (16, 8)},
}
