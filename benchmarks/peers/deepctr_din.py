"""DeepCTR-Torch 0.3.0 DIN on the exported P1 samples (runs in .venv-bench).

    deepctr_din.py --inputs DIR/deepctr --info DIR/info.json --epochs 3 --result FILE --predictions FILE.npy

Uses only DeepCTR-Torch's public API: ``SparseFeat`` item_id / cate_id, ``VarLenSparseFeat`` hist_item_id /
hist_cate_id (maxlen 50, sharing the target's embedding, ``length_name="seq_length"``), ``models.DIN``,
``compile`` with Adam(lr 1e-3) and binary cross-entropy, one ``fit(epochs=N)`` call on dict-of-numpy input.
An epoch's training time is taken by a callback between ``on_epoch_begin`` and ``on_epoch_end`` (no
validation_data is given to ``fit``, so nothing but training happens in between); at each epoch end the
callback predicts valid and test (untimed) and keeps the test predictions of the best validation AUC.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from deepctr_torch.callbacks import Callback  # noqa: E402
from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat  # noqa: E402
from deepctr_torch.models import DIN  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

# DIN builds its DNN with DeepCTR-Torch's default dice_dim=3, so dnn_activation="dice" fails on the 2-D DNN input
# (AssertionError in layers/activation.py Dice.forward): the DNN keeps DIN's default, relu. Attention uses Dice.
DNN_ACTIVATION = "relu"


def load(path: Path) -> tuple[dict, np.ndarray]:
    z = np.load(path)
    x = {"item_id": z["item"], "cate_id": z["cate"], "hist_item_id": z["hist_item"],
         "hist_cate_id": z["hist_cate"], "seq_length": z["seq_length"]}
    return x, z["label"]


class EpochTimer(Callback):
    """Times each epoch's training; predicts valid/test after it (outside the timed part)."""

    def __init__(self, valid, test, n_train: int) -> None:
        super().__init__()
        self.valid, self.test, self.n_train = valid, test, n_train
        self.speeds, self.valid_aucs = [], []
        self.best_auc, self.best_epoch, self.best_test = -1.0, 0, None
        self.started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        self.speeds.append(self.n_train / seconds)
        model = self.model
        valid_pred = model.predict(self.valid[0], batch_size=8192)
        auc = float(roc_auc_score(self.valid[1], valid_pred))
        self.valid_aucs.append(auc)
        common.log(f"deepctr-torch epoch {epoch + 1}: {self.speeds[-1]:,.0f} samples/s ({seconds:.1f}s), valid AUC {auc:.4f}")
        if auc > self.best_auc:
            self.best_auc, self.best_epoch = auc, epoch + 1
            self.best_test = model.predict(self.test[0], batch_size=8192).reshape(-1)
        model.train()  # fit() sets train mode once before its loop; predict() left the model in eval mode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--info", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, required=True)
    args = parser.parse_args()
    common.set_threads(torch)
    torch.manual_seed(common.SEED)
    np.random.seed(common.SEED)

    sizes = json.loads(args.info.read_text())["vocab_sizes"]
    n_items, n_cates = sizes["item"], max(sizes.get("cate", 2), 2)
    dim = common.EMBEDDING_DIM
    columns = [
        SparseFeat("item_id", vocabulary_size=n_items, embedding_dim=dim),
        SparseFeat("cate_id", vocabulary_size=n_cates, embedding_dim=dim),
        VarLenSparseFeat(SparseFeat("hist_item_id", vocabulary_size=n_items, embedding_dim=dim, embedding_name="item_id"),
                         maxlen=common.MAX_LEN, length_name="seq_length"),
        VarLenSparseFeat(SparseFeat("hist_cate_id", vocabulary_size=n_cates, embedding_dim=dim, embedding_name="cate_id"),
                         maxlen=common.MAX_LEN, length_name="seq_length"),
    ]
    train_x, train_y = load(args.inputs / "train.npz")
    valid = load(args.inputs / "valid.npz")
    test = load(args.inputs / "test.npz")
    model = DIN(columns, ["item_id", "cate_id"], dnn_hidden_units=common.DNN_HIDDEN, dnn_activation=DNN_ACTIVATION,
                att_hidden_size=common.ATTENTION_HIDDEN, att_activation="Dice", att_weight_normalization=False,
                l2_reg_dnn=0.0, l2_reg_embedding=0.0, dnn_dropout=0, seed=common.SEED, task="binary", device="cpu")
    model.compile(torch.optim.Adam(model.parameters(), lr=common.LR), "binary_crossentropy", metrics=["binary_crossentropy"])
    timer = EpochTimer(valid, test, len(train_y))
    model.fit(train_x, train_y, batch_size=common.BATCH_SIZE, epochs=args.epochs, verbose=0, shuffle=True,
              callbacks=[timer])
    np.save(args.predictions, timer.best_test.astype(np.float64))
    common.write_result(args.result, {
        "library": "DeepCTR-Torch", "version": __import__("deepctr_torch").__version__, "model": "din",
        "epoch_samples_per_s": timer.speeds, "samples_per_s": common.median_after_warmup(timer.speeds),
        "valid_auc": timer.valid_aucs, "best_epoch": timer.best_epoch, "auc_at": "best validation epoch",
        "train_samples": int(len(train_y)), "predictions": str(args.predictions),
        "settings": "SparseFeat+VarLenSparseFeat(maxlen 50, shared embeddings), DIN(dnn (200,80) relu (dice fails in 0.3.0's DIN), att (64,32) Dice, "
                    "no weight normalisation, l2 0), Adam 1e-3, loss BCE (sum), batch 1024, verbose=0",
    })


if __name__ == "__main__":
    main()
