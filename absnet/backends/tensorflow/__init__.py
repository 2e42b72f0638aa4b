"""absnet.backends.tensorflow (optional extra ``absnet[tensorflow]``): the facade realised in TensorFlow.

:class:`TfOps` runs the same rules natively in TensorFlow (eager or ``tf.function``),
:class:`TfAnalysis` / :func:`analyse_tf` a network's analysis, :class:`TfTrainer` a certified-training
step under ``tf.GradientTape``. The package imports without TensorFlow; using it without raises E505.
"""

from absnet.backends.tensorflow.analysis import TfAnalysis, analyse_tf
from absnet.backends.tensorflow.ops import TfOps, require_tensorflow
from absnet.backends.tensorflow.train import TfTrainer

__all__ = ["TfAnalysis", "TfOps", "TfTrainer", "analyse_tf", "require_tensorflow"]
