"""Training and evaluation of ranking models.

``lifelong.train`` is also the Python API's train function (:func:`lifelong.api.train`): the package
name and the function name coincide, and once this package is imported its module object is what
``lifelong.train`` holds, so the module itself is callable and forwards to the function.
"""

import sys
import types

from lifelong.train.loop import TrainConfig, evaluate, evaluate_run, predict, train

__all__ = ["TrainConfig", "evaluate", "evaluate_run", "predict", "train"]


class _CallableModule(types.ModuleType):
    """This package, callable as :func:`lifelong.api.train` (``lifelong.train(data, model, out, ...)``)."""

    def __call__(self, *args, **kwargs):
        from lifelong.api import train as api_train

        return api_train(*args, **kwargs)

    @property
    def __signature__(self):
        import inspect

        from lifelong.api import train as api_train

        return inspect.signature(api_train)


sys.modules[__name__].__class__ = _CallableModule
