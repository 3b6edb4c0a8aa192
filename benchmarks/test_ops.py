"""Per-op benchmarks: each kernel of a LeNet-5 training step at the model's shapes, and
the kernels of lenet5-classic and compact at theirs, for every contender (fastlenet
backends, PyTorch) and batch size.

Every case first checks its result against the NumPy backend's (float32 tolerance),
timing that first call as ``first_call_s`` (the JIT or kernel compile, or the load from
its disk cache, of a compiled backend; allocator warm-up elsewhere), makes a few more
untimed calls, and only then is timed; the call synchronizes the device inside the timed
function. After timing, the last result is checked again. ``extra_info`` holds the op,
layer, images per call, the first-call time, the median and images/s.
"""

from __future__ import annotations

import pytest

from .ops import (AVG_POOLS, BATCHNORM_BLOCKS, BATCHNORMS, CONV_BLOCKS, CONVS, LINEARS, POOLS,
                  TANHS, adam_inputs, avgpool_inputs, batchnorm_block_inputs, batchnorm_inputs,
                  conv_inputs, linear_inputs, loss_inputs, measure, pool_inputs, tanh_inputs)


@pytest.mark.parametrize("layer", CONVS)
def test_conv2d_forward(benchmark, contender, batch, layer):
    x, w, b, pad, _, _ = conv_inputs(layer, batch)
    measure(benchmark, contender, "conv2d_forward", layer, (x, w, b, pad), batch)


@pytest.mark.parametrize("layer", CONVS)
def test_conv2d_backward(benchmark, contender, batch, layer):
    """dw, db where the layer has a bias, and dx except for a model's first layer (which
    needs none)."""
    measure(benchmark, contender, "conv2d_backward", layer, conv_inputs(layer, batch), batch)


@pytest.mark.parametrize("layer", CONV_BLOCKS)
def test_conv2d_relu_maxpool2d_forward(benchmark, contender, batch, layer):
    """A conv block forward, as the model runs it: the convolution, ReLU and 2x2 max-pool
    as one call (fastlenet's numba backend never stores the convolution's output;
    PyTorch runs its three ops)."""
    x, w, b, pad, _, _ = conv_inputs(layer, batch)
    measure(benchmark, contender, "conv2d_relu_maxpool2d_forward", layer, (x, w, b, pad), batch)


@pytest.mark.parametrize("op", ["batchnorm_forward", "batchnorm_backward"])
@pytest.mark.parametrize("layer", BATCHNORMS)
def test_batchnorm(benchmark, contender, batch, layer, op):
    """compact's batch norms in training mode (statistics of the batch, running estimates
    updated), forward or backward."""
    measure(benchmark, contender, op, layer, batchnorm_inputs(layer, batch), batch)


@pytest.mark.parametrize("op", ["batchnorm_relu_maxpool2d_forward",
                                "batchnorm_relu_maxpool2d_backward"])
@pytest.mark.parametrize("layer", BATCHNORM_BLOCKS)
def test_batchnorm_relu_maxpool2d(benchmark, contender, batch, layer, op):
    """compact's batch norm + ReLU + 2x2 max-pool blocks as the model runs them (one call
    each way; PyTorch runs its three ops), forward or backward."""
    measure(benchmark, contender, op, layer, batchnorm_block_inputs(layer, batch), batch)


@pytest.mark.parametrize("op", ["tanh_forward", "tanh_backward"])
@pytest.mark.parametrize("layer", TANHS)
def test_tanh(benchmark, contender, batch, layer, op):
    """lenet5-classic's activations, forward (from x) or backward (dy to dx, from the
    forward's output)."""
    x, dy = tanh_inputs(layer, batch)
    measure(benchmark, contender, op, layer, (x,) if op.endswith("forward") else (x, dy), batch)


@pytest.mark.parametrize("op", ["avgpool2d_forward", "avgpool2d_backward"])
@pytest.mark.parametrize("layer", AVG_POOLS)
def test_avgpool2d(benchmark, contender, batch, layer, op):
    """lenet5-classic's subsampling, forward (from x) or backward (dy to dx)."""
    x, dy = avgpool_inputs(layer, batch)
    measure(benchmark, contender, op, layer, (x,) if op.endswith("forward") else (x, dy), batch)


@pytest.mark.parametrize("layer", POOLS)
def test_maxpool2d_forward(benchmark, contender, batch, layer):
    x, _ = pool_inputs(layer, batch)
    measure(benchmark, contender, "maxpool2d_forward", layer, (x,), batch)


@pytest.mark.parametrize("layer", POOLS)
def test_maxpool2d_backward(benchmark, contender, batch, layer):
    measure(benchmark, contender, "maxpool2d_backward", layer, pool_inputs(layer, batch), batch)


@pytest.mark.parametrize("layer", POOLS)
def test_relu_maxpool2d_forward(benchmark, contender, batch, layer):
    """The fused ReLU + max-pool step the model runs after each convolution."""
    x, _ = pool_inputs(layer, batch)
    measure(benchmark, contender, "relu_maxpool2d_forward", layer, (x,), batch)


@pytest.mark.parametrize("layer", POOLS)
def test_relu_maxpool2d_backward(benchmark, contender, batch, layer):
    measure(benchmark, contender, "relu_maxpool2d_backward", layer, pool_inputs(layer, batch),
            batch)


@pytest.mark.parametrize("layer", LINEARS)
def test_linear_forward(benchmark, contender, batch, layer):
    x, w, b, _ = linear_inputs(layer, batch)
    measure(benchmark, contender, "linear_forward", layer, (x, w, b), batch)


@pytest.mark.parametrize("layer", LINEARS)
def test_linear_backward(benchmark, contender, batch, layer):
    measure(benchmark, contender, "linear_backward", layer, linear_inputs(layer, batch), batch)


def test_softmax_cross_entropy(benchmark, contender, batch):
    """The loss and its gradient, as one call."""
    measure(benchmark, contender, "softmax_cross_entropy", None, loss_inputs(batch), batch)


def test_adam_update(benchmark, contender):
    """One Adam step over all 61,706 LeNet-5 parameters (10 arrays); no batch size. Checked
    after its first step (the timed steps move the parameters on)."""
    measure(benchmark, contender, "adam_update", None, (adam_inputs(),), None, stateless=False)
