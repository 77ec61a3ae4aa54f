import math

import numpy as np
import torch

from fptt_edge.surrogate import MultiGaussianSpike, heaviside, multi_gaussian, spike


def _psi_numpy(x):
    def n(x, mu, sd):
        return np.exp(-((x - mu) ** 2) / (2 * sd**2)) / (math.sqrt(2 * math.pi) * sd)

    s, h, k, g = 0.3, 0.15, 6.0, 0.5
    return g * ((1 + h) * n(x, 0, s) - h * n(x, s, k * s) - h * n(x, -s, k * s))


def test_surrogate_check_values_from_spec():
    assert abs(float(multi_gaussian(torch.tensor(0.0))) - 0.732) < 1e-3
    x = torch.linspace(-30, 30, 600_001, dtype=torch.float64)
    integral = torch.trapezoid(multi_gaussian(x), x)
    assert abs(float(integral) - 0.5 * (1 - 0.15)) < 1e-6
    # turns negative for |x| > ~0.763
    xs = torch.linspace(0, 3, 30_001, dtype=torch.float64)
    first_negative = float(xs[multi_gaussian(xs) < 0][0])
    assert abs(first_negative - 0.763) < 2e-3
    assert float(multi_gaussian(torch.tensor(-0.9))) < 0


def test_surrogate_matches_independent_numpy_formula():
    x = torch.linspace(-3, 3, 101, dtype=torch.float64)
    np.testing.assert_allclose(multi_gaussian(x).numpy(), _psi_numpy(x.numpy()), rtol=1e-12)


def test_spike_forward_is_heaviside_and_backward_is_psi():
    x = torch.tensor([-1.0, -1e-7, 0.0, 1e-7, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    out = MultiGaussianSpike.apply(x)
    assert out.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    upstream = torch.arange(1.0, 7.0, dtype=torch.float64)
    (grad,) = torch.autograd.grad(out, x, upstream)
    np.testing.assert_allclose(grad.numpy(), upstream.numpy() * _psi_numpy(x.detach().numpy()), rtol=1e-12)


def test_inference_spike_has_no_custom_autograd_function():
    x = torch.randn(5, requires_grad=True)
    out = spike(x, surrogate=False)
    assert torch.equal(out, heaviside(x))
    assert out.grad_fn is None or "MultiGaussian" not in type(out.grad_fn).__name__
    trained = spike(x, surrogate=True)
    assert "MultiGaussianSpike" in type(trained.grad_fn).__name__
