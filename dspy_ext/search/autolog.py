"""MLflow's DSPy autologging (``mlflow.dspy.autolog(log_compiles=True)``) for dspy-ext's optimizers.

``mlflow.dspy.autolog()`` patches ``compile`` on the classes ``Teleprompter.__subclasses__()`` lists
at the moment it is called: the direct subclasses of DSPy's ``Teleprompter`` that exist then.
dspy-ext's optimizers (APE, OPRO, EvoPrompt, ProTeGi, DemoSearch) inherit ``compile`` from
:class:`~dspy_ext.search.SearchTeleprompter`, a direct subclass, so with dspy-ext imported before
``autolog()`` each of their compiles is one autologged MLflow run, as MIPROv2's is. Imported after,
MLflow would not see them: :func:`follow_mlflow_autolog` then gives the class MLflow's own patch,
registered with MLflow, so that ``autolog(disable=True)`` (or a later ``autolog()``) reverts it as
it reverts the patches of DSPy's classes.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)

#: MLflow's name of its DSPy integration.
FLAVOR = "dspy"


def follow_mlflow_autolog(cls: type) -> None:
    """Patch ``cls.compile`` as ``mlflow.dspy.autolog()`` patches DSPy's optimizers, if it was already called.

    Nothing happens when ``mlflow.dspy`` was never imported (no ``autolog()`` can have run; MLflow is
    not imported here), when its DSPy autologging is off, or on an MLflow without the patch.
    """
    if "mlflow.dspy" not in sys.modules:
        return
    try:
        from mlflow.dspy.autolog import _patched_compile
        from mlflow.utils.autologging_utils import autologging_is_disabled, get_autologging_config, safe_patch
    except ImportError:
        logger.debug("this MLflow has no DSPy compile patch; %s is not autologged", cls.__name__)
        return
    if autologging_is_disabled(FLAVOR):
        return
    manage_run = get_autologging_config(FLAVOR, "log_compiles")
    safe_patch(FLAVOR, cls, "compile", _patched_compile, manage_run=manage_run)
