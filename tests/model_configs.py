"""Tiny configs for the common model contract: every registered model needs one (a meta-test checks)."""

TINY_VOCAB = {"n_items": 30, "n_cates": 8, "n_behaviors": 4}

TINY_CONFIGS: dict[str, dict] = {
    "sumpool": {"embedding_dim": 4, "dnn_hidden": (16, 8)},
    "din": {"embedding_dim": 4, "attention_hidden": (8, 4), "dnn_hidden": (16, 8)},
    "dien": {"embedding_dim": 4, "aux_hidden": (8,), "dnn_hidden": (16, 8)},
    "tin": {"embedding_dim": 4, "temporal_encoding": "both", "max_positions": 6, "n_buckets": 8, "dnn_hidden": (16, 8)},
    "bst": {"embedding_dim": 4, "num_heads": 2, "max_positions": 6, "dnn_hidden": (16, 8)},
    "diffumin": {"embedding_dim": 4, "channels": 3, "top_per_channel": 2, "short_length": 3, "denoiser_layers": 1,
                 "short_layers": 1, "infer_steps": 3, "dnn_hidden": (16, 8)},
    "sdim": {"embedding_dim": 4, "short_length": 3, "hashes": 8, "hash_bits": 2, "chunk_length": 3, "attention_hidden": (8, 4), "dnn_hidden": (16, 8)},
    "sim": {"embedding_dim": 4, "short_length": 3, "top_k": 3, "heads": 2, "gap_buckets": 8, "chunk_length": 3, "attention_hidden": (8, 4), "dnn_hidden": (16, 8)},
    "eta": {"embedding_dim": 4, "short_length": 3, "hashes": 16, "top_k": 3, "heads": 2, "chunk_length": 3, "attention_hidden": (8, 4), "dnn_hidden": (16, 8)},
    "twin": {"embedding_dim": 4, "short_length": 3, "top_k": 3, "heads": 2, "gap_buckets": 8, "chunk_length": 3, "attention_hidden": (8, 4), "dnn_hidden": (16, 8)},
    "sasrec": {"embedding_dim": 8, "heads": 2, "max_positions": 20, "dropout": 0.1, "loss": "full"},
    "idnp": {"embedding_dim": 8, "scales": (1, 2, 4), "decoder_hidden": 32, "dropout": 0.1, "loss": "full"},
    "iclrec": {"embedding_dim": 8, "heads": 2, "max_positions": 16, "dropout": 0.1, "loss": "full", "intents": 4,
               "kmeans_iterations": 5},
    "sasrec_priors": {"embedding_dim": 8, "heads": 2, "max_positions": 20, "dropout": 0.1, "loss": "full",
                      "priors": "category,term", "category_heads": 2, "short_window": 2},
    "youtube_dnn": {"embedding_dim": 8, "hidden": (16,), "negatives": 8},
    "knn_embed": {"embedding_dim": 8, "hidden": (16,), "negatives": 8, "clusters": 4, "interests": 2, "neighbors": 2},
    "mind": {"embedding_dim": 8, "interests": 3, "hidden": (16,), "negatives": 8},
    "comirec_dr": {"embedding_dim": 8, "max_positions": 7, "negatives": 8},
    "comirec_sa": {"embedding_dim": 8, "max_positions": 7, "negatives": 8},
    "hcn": {"embedding_dim": 8, "interests": 3, "short_interests": 1, "short_window": 3, "levels": 2, "negatives": 8},
}
