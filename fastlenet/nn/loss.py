"""The loss: softmax cross-entropy with optional label smoothing."""

from __future__ import annotations

from ..backends import Backend, get_backend
from ..backends.base import Array
from ..checks import is_real
from ..errors import ConfigError


class SoftmaxCrossEntropy:
    """Mean softmax cross-entropy of logits (K, N) against integer labels (N,).

    With label smoothing s the target is q = (1 - s) * onehot + s / K;
    loss = mean_n [logsumexp(z[:, n]) - sum_k q[k, n] z[k, n]], dlogits = (softmax - q) / N,
    computed by ``backend.softmax_cross_entropy`` (stable for logits of any size).
    ``backend`` is the model's (``SoftmaxCrossEntropy(s, backend=model.backend)``).
    """

    def __init__(self, label_smoothing: float = 0.0, *, backend: str | Backend):
        if not is_real(label_smoothing) or not 0.0 <= label_smoothing <= 1.0:
            raise ConfigError(f"label smoothing must be a number in [0, 1] "
                              f"(got {label_smoothing!r}); 0 disables it")
        self.label_smoothing = float(label_smoothing)
        self.backend = get_backend(backend)
        self._dlogits = None

    def forward(self, logits: Array, labels: Array) -> Array:
        """Loss as a 0-d device array (no host synchronisation); caches dlogits."""
        loss, self._dlogits = self.backend.softmax_cross_entropy(
            logits, labels, self.label_smoothing)
        return loss

    def backward(self) -> Array:
        """dloss/dlogits (K, N) of the last forward."""
        return self._dlogits
