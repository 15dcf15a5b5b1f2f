"""Networks of the reconstruction detectors: autoencoders (plain, variational, memory) in 1D/2D/3D,
the MemAE memory module, and the coarse noise of the denoising autoencoder."""

from __future__ import annotations

import pytest
import torch

from medad.nets.autoencoder import (ConvAutoEncoder, MemConvAutoEncoder, VarConvAutoEncoder, kl_divergence,
                                    pad_to_multiple)
from medad.nets.memory import MemoryModule, hard_shrink_relu, memory_entropy
from medad.nets.noise import coarse_noise, make_noise

# odd sides on purpose: the networks pad to a multiple of the total stride and crop back
SHAPES = {1: (37,), 2: (30, 27), 3: (10, 13, 12)}


CASES = [(cls, latent) for cls in (ConvAutoEncoder, VarConvAutoEncoder, MemConvAutoEncoder)
         for latent in ("spatial", "vector", "skip") if not (cls is MemConvAutoEncoder and latent == "skip")]


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("cls, latent", CASES)
def test_autoencoder_shapes(spatial_dims, cls, latent):
    shape = SHAPES[spatial_dims]
    kw = {"latent_size": 6, "in_shape": shape} if latent == "vector" else {"skip_connections": latent == "skip"}
    net = cls(spatial_dims=spatial_dims, in_channels=2, channels=(4, 8), strides=(2, 2), latent_channels=3, **kw)
    x = torch.randn(3, 2, *shape)
    out = net(x)
    recon = out[0] if isinstance(out, tuple) else out
    assert recon.shape == x.shape
    assert net.reconstruct(x).shape == x.shape
    coarse = [-(-n // 4) for n in shape]
    if cls is VarConvAutoEncoder:
        _, mu, logvar = out
        expect = (3, 6) if latent == "vector" else (3, 3, *coarse)
        assert mu.shape == logvar.shape == expect
    if cls is MemConvAutoEncoder:
        _, w = out
        assert w.shape == ((3, 100) if latent == "vector" else (3, *coarse, 100))
    # gradients reach the first layer
    recon.pow(2).mean().backward()
    assert next(net.parameters()).grad is not None


def test_autoencoder_1d():
    net = ConvAutoEncoder(spatial_dims=1, in_channels=3, channels=(4, 8), strides=(2, 2))
    x = torch.randn(2, 3, *SHAPES[1])
    assert net(x).shape == x.shape


def test_memae_refuses_skip_connections():
    with pytest.raises(ValueError, match="skip"):
        MemConvAutoEncoder(spatial_dims=2, in_channels=1, skip_connections=True)


def test_vector_latent_needs_in_shape():
    with pytest.raises(ValueError, match="in_shape"):
        ConvAutoEncoder(spatial_dims=2, in_channels=1, latent_size=8)


def test_vae_samples_in_training_and_uses_the_mean_in_eval():
    torch.manual_seed(0)
    net = VarConvAutoEncoder(spatial_dims=2, in_channels=1, channels=(4, 8), strides=(2, 2), norm="instance")
    x = torch.randn(2, 1, 16, 16)
    net.train()
    assert not torch.allclose(net(x)[0], net(x)[0])
    net.eval()
    r1, mu, _ = net(x)
    assert torch.equal(r1, net(x)[0])
    assert torch.equal(net.encode(x), mu)


def test_kl_divergence():
    z = torch.zeros(4, 8)
    assert kl_divergence(z, z).item() == pytest.approx(0.0)
    # KL(N(1, 1) || N(0, 1)) = 1/2 per dimension
    assert kl_divergence(torch.ones(4, 8), z).item() == pytest.approx(4.0)


def test_hard_shrinkage_formula():
    w = torch.tensor([0.05, 0.1, 0.3, 0.55])
    out = hard_shrink_relu(w, 0.2)
    assert out[:2].eq(0).all()
    # above the threshold the value is kept (max(w - l, 0) * w / |w - l| = w)
    assert torch.allclose(out[2:], w[2:], atol=1e-6)


@pytest.mark.parametrize("shape", [(5, 16), (2, 16, 6, 7), (2, 16, 3, 4, 5)])
def test_memory_module_weights_sparse_and_normalised(shape):
    torch.manual_seed(0)
    mem = MemoryModule(num_slots=50, dim=16, shrink_threshold=0.04)
    z = torch.randn(*shape) * 3
    out, w = mem(z)
    assert out.shape == z.shape
    assert w.shape == (shape[0], *shape[2:], 50)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[:-1]), atol=1e-5, rtol=0)
    # shrinkage zeroes most slots, plain softmax none
    assert (w == 0).float().mean() > 0.5
    dense = torch.softmax(z.movedim(1, -1) @ mem.memory.t(), -1)
    assert (dense == 0).float().mean() == 0
    assert memory_entropy(w) < memory_entropy(dense)
    # the read-out is the weighted sum of prototypes
    q = z.movedim(1, -1).reshape(-1, 16)
    torch.testing.assert_close(out.movedim(1, -1).reshape(-1, 16), mem.address(q) @ mem.memory)
    out.sum().backward()
    assert mem.memory.grad is not None and mem.memory.grad.abs().sum() > 0


def test_memory_entropy_bounds():
    n = 8
    uniform = torch.full((3, n), 1.0 / n)
    onehot = torch.eye(n)[:3]
    assert memory_entropy(uniform).item() == pytest.approx(torch.log(torch.tensor(float(n))).item(), rel=1e-5)
    assert memory_entropy(onehot).item() == pytest.approx(0.0, abs=1e-6)


def test_memory_rejects_wrong_dim():
    with pytest.raises(ValueError, match="dim"):
        MemoryModule(4, 8)(torch.randn(2, 5, 3, 3))


def test_pad_to_multiple():
    x = torch.arange(30.0).reshape(1, 1, 5, 6)
    y = pad_to_multiple(x, 4)
    assert y.shape == (1, 1, 8, 8)
    assert torch.equal(y[..., :5, :6], x)
    assert pad_to_multiple(x[..., :4, :4], 4) is not None and pad_to_multiple(x[..., :4, :4], 4).shape == (1, 1, 4, 4)


@pytest.mark.parametrize("shape", [(4, 1, 64), (4, 2, 32, 32), (2, 1, 8, 16, 16)])
def test_coarse_noise_is_smooth_and_reproducible(shape):
    a = coarse_noise(shape, 4, generator=torch.Generator().manual_seed(1))
    b = coarse_noise(shape, 4, generator=torch.Generator().manual_seed(1))
    assert a.shape == shape and torch.equal(a, b)
    # low frequency: neighbouring values are strongly correlated, unlike white noise
    last = a.reshape(-1, shape[-1])
    corr = torch.corrcoef(torch.stack([last[:, :-1].flatten(), last[:, 1:].flatten()]))[0, 1]
    assert corr > 0.8
    n = make_noise("coarse", torch.zeros(shape), res=4, generator=torch.Generator().manual_seed(0))
    dims = list(range(1, len(shape)))
    torch.testing.assert_close(n.std(dim=dims), torch.ones(shape[0]), atol=1e-4, rtol=0)


def test_make_noise_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown noise"):
        make_noise("pink", torch.zeros(1, 1, 8, 8))
