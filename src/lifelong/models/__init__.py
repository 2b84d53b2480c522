"""Models: one file each, registered by ``model_type``. Importing this package registers them all."""

from lifelong.models.ranking import Candidates, RankingModel, UserState
from lifelong.models.registry import MODELS, ModelConfig, ModelOutput, build_model, config_from_dict, register
from lifelong.models import bst, comirec, dien, diffumin, din, eta, hcn, iclrec, idnp, knn_embed, mind, priors, sasrec, sdim, sim, sumpool, tin, twin, youtube_dnn  # noqa: F401  (registration)

__all__ = ["MODELS", "Candidates", "ModelConfig", "ModelOutput", "RankingModel", "UserState", "build_model",
           "config_from_dict", "register"]
