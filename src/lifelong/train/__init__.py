"""Training and evaluation of ranking models."""

from lifelong.train.loop import TrainConfig, evaluate, evaluate_run, predict, train

__all__ = ["TrainConfig", "evaluate", "evaluate_run", "predict", "train"]
