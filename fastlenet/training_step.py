"""One training step as a single function, which a backend may record and replay."""

from __future__ import annotations

import numpy as np

from .step_signature import step_signature


class TrainingStep:
    """One training step on a training set held on the device, as the trainer runs it.

    ``step(idx)`` takes the batch's image indices (a device integer array) and returns
    the batch's mean loss, a 0-d device array that the next call overwrites (copy what
    you keep); ``correct`` counts on the device the training images classified correctly
    since it was last zeroed. The host half of the optimizer's step (``prepare_step``:
    its counts, and its per-step scalars written to the device) runs first; then the
    batch gather, forward, loss, backward and the optimizer's update run as one function
    that the backend may record once and replay (``Backend.capture_step``), as long as
    :meth:`signature`, the host values baked into it, stays the same. With an augmenter
    the batch is gathered and transformed before that function (the augmenter's smoothing
    is matrix products, cuBLAS calls on a GPU), which then starts at the forward pass.
    """

    def __init__(self, model, loss_fn, optimizer, x, y, augmenter=None):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.backend = backend = model.backend
        self.x, self.y = x, y
        self.augmenter = augmenter
        self.correct = backend.xp.zeros((), dtype=np.int64)
        body = self._from_indices if augmenter is None else self._from_batch
        self._run = backend.capture_step(body, signature=self.signature)

    def __call__(self, idx):
        # the backward inside the step assigns every gradient before the update reads them
        self.optimizer.prepare_step(every_grad=True)
        if self.augmenter is None:
            return self._run(idx)[0]
        xb = self.augmenter(self.backend.to_batch_last(self.x, idx))
        return self._run(xb, self.y[idx])[0]

    def _from_indices(self, idx):
        return self._from_batch(*self.backend.gather_batch(self.x, self.y, idx))

    def _from_batch(self, xb, yb):
        """Forward, loss, backward and update on xb (C, H, W, B) with labels yb (B,);
        reads nothing back to the host, returns ``(loss,)``."""
        logits = self.model.forward(xb)
        loss = self.loss_fn.forward(logits, yb)
        self.backend.count_correct(logits, yb, self.correct)
        self.model.backward(self.loss_fn.backward())
        self.optimizer.update()
        return (loss,)

    def signature(self):
        """The host values a recorded step bakes in (fastlenet.step_signature)."""
        return step_signature(self.model, self.loss_fn, self.optimizer)
