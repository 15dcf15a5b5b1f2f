"""Signal networks: shapes and gradients, the neural memory update on a hand-checked case,
memory persistence across sequences, and the amplitude-normalising front end."""

from __future__ import annotations

import math

import pytest
import torch

from medad.nets.cnn import SignalCNN
from medad.nets.memory_network import NeuralMemory, NeuralMemoryNetwork, PlasticLinear
from medad.nets.recurrent import (NextStepPredictor, RecurrentClassifier, SequenceAutoencoder, from_frames,
                                  to_frames)
from medad.nets.signal_prep import SignalPrep





def _grads_flow(net: torch.nn.Module, out: torch.Tensor) -> None:
    out.float().pow(2).mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads), "some parameter got no gradient"
    assert any(float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("spatial_dims,shape", [(1, (3, 2, 200)), (2, (3, 2, 17, 30))])
@pytest.mark.parametrize("out_channels", [1, 4, 0])
def test_signal_cnn_shapes_and_gradients(spatial_dims, shape, out_channels):
    net = SignalCNN(spatial_dims, in_channels=2, out_channels=out_channels, channels=(4, 8), dilations=(1, 2))
    out = net(torch.randn(*shape))
    assert out.shape == (3, out_channels if out_channels else 8)
    assert net.features(torch.randn(*shape)).ndim == len(shape)
    _grads_flow(net, out)


def test_signal_cnn_rejects_3d():
    with pytest.raises(ValueError):
        SignalCNN(3)


def test_frames_round_trip():
    x = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(2, 3, 10)
    f = to_frames(x, 4)  # 2 frames, remainder of 2 dropped
    assert f.shape == (2, 2, 12)
    assert torch.equal(f[0, 1, :4], x[0, 0, 4:8]) and torch.equal(f[0, 1, 4:8], x[0, 1, 4:8])
    assert torch.equal(from_frames(f, 3), x[:, :, :8])
    with pytest.raises(ValueError):
        to_frames(x, 11)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional,num_layers", [(False, 1), (True, 2)])
def test_recurrent_classifier(cell, bidirectional, num_layers):
    net = RecurrentClassifier(12, out_channels=3, hidden_size=8, num_layers=num_layers,
                              bidirectional=bidirectional, cell=cell)
    out = net(torch.randn(4, 5, 12))
    assert out.shape == (4, 3)
    _grads_flow(net, out)
    assert net.embed(torch.randn(4, 5, 12)).shape == (4, net.embedding_size)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_sequence_autoencoder_and_predictor(cell):
    x = torch.randn(4, 6, 10)
    for code, code_shape in (("step", (4, 6, 3)), ("sequence", (4, 3))):
        ae = SequenceAutoencoder(10, hidden_size=8, latent_size=3, cell=cell, code=code)
        rec = ae(x)
        assert rec.shape == x.shape and ae.encode(x).shape == code_shape
        _grads_flow(ae, rec - x)
    pred = NextStepPredictor(10, hidden_size=8, cell=cell)
    p = pred(x)
    assert p.shape == (4, 5, 10)
    _grads_flow(pred, p - x[:, 1:])


def test_predictor_is_causal():
    """Changing the last step must not change the predictions (they only see the past)."""
    pred = NextStepPredictor(5, hidden_size=6).eval()
    x = torch.randn(2, 4, 5)
    y = x.clone()
    y[:, -1] += 10.0
    assert torch.allclose(pred(x), pred(y))


def test_bad_cell():
    with pytest.raises(ValueError):
        RecurrentClassifier(4, cell="rnn")


# ----------------------------------------------------------------------------- memory network
def _identity_memory(k: int, l: int) -> NeuralMemory:
    """Memory cell whose three controllers are the identity (no bias, no activation)."""
    cell = NeuralMemory(k, memory_size=k, slots=l, read_activation=None, controller_activation=None)
    with torch.no_grad():
        for ctrl in (cell.f_r, cell.f_o, cell.f_w):
            ctrl.linear.weight.copy_(torch.eye(k))
            ctrl.linear.bias.zero_()
    return cell


def test_memory_update_matches_hand_computation():
    # k = 2, l = 2, M0 = I; query q = (ln 3, 0)  =>  qᵀM0 = (ln 3, 0), z = softmax = (3/4, 1/4)
    cell = _identity_memory(2, 2)
    m0 = torch.eye(2).unsqueeze(0)
    x = torch.tensor([[math.log(3.0), 0.0]])
    m, m1, _, z = cell.step(x, m0)
    assert torch.allclose(z, torch.tensor([[0.75, 0.25]]))
    # read m̄ = z M0ᵀ = (3/4, 1/4); f_o, f_w are identities, so m = m' = (3/4, 1/4)
    assert torch.allclose(m, torch.tensor([[0.75, 0.25]]))
    # M1 = M0 ∘ (1 − z⊗e_k)ᵀ + (m'⊗e_l) ∘ (z⊗e_k)ᵀ, column by column:
    #   slot 0: (1 − 3/4)·(1, 0) + 3/4·(3/4, 1/4) = (13/16, 3/16)
    #   slot 1: (1 − 1/4)·(0, 1) + 1/4·(3/4, 1/4) = (3/16, 13/16)
    expected = torch.tensor([[13 / 16, 3 / 16], [3 / 16, 13 / 16]])
    assert torch.allclose(m1[0], expected)
    # a second step from M1 with q = (0, 0): uniform attention z = (1/2, 1/2), read = row means
    m, m2, _, z = cell.step(torch.zeros(1, 2), m1)
    assert torch.allclose(z, torch.tensor([[0.5, 0.5]]))
    assert torch.allclose(m, torch.tensor([[0.5, 0.5]]))
    # slot j: 1/2·M1[:, j] + 1/2·(1/2, 1/2)
    assert torch.allclose(m2[0], 0.5 * expected + 0.25)


def test_memory_update_general_formula():
    """Random sizes: the update equals the matrix formula with element-wise products."""
    torch.manual_seed(0)
    k, l = 3, 5
    cell = NeuralMemory(4, memory_size=k, slots=l)
    x, mem = torch.randn(2, 4), torch.randn(2, k, l)
    m, new, _, z = cell.step(x, mem)
    e_k, e_l = torch.ones(k), torch.ones(l)
    for b in range(2):
        w, _ = cell.f_w(m[b : b + 1])
        zk = torch.outer(z[b], e_k)                      # z_t ⊗ e_k  (l x k)
        expect = mem[b] * (1 - zk).T + torch.outer(w[0], e_l) * zk.T
        assert torch.allclose(new[b], expect, atol=1e-6)
    assert torch.allclose(z.sum(1), torch.ones(2))


def test_memory_network_keeps_state_across_sequences():
    torch.manual_seed(0)
    net = NeuralMemoryNetwork(6, out_channels=1, hidden_size=5, memory_size=4, slots=3)
    init = net.memory.clone()
    x = torch.randn(3, 4, 6)
    net.train()
    out1 = net(x)
    after1 = net.memory.clone()
    assert not torch.allclose(after1, init), "training did not write the memory"
    assert not after1.requires_grad, "the stored memory must be detached between batches"
    # the same batch again starts from the memory the first one left, so the outputs differ
    out2 = net(x)
    assert not torch.allclose(out1, out2)
    # within a batch items are chained: item 1 sees the memory item 0 wrote
    net.reset_memory()
    assert torch.equal(net.memory, init)
    both = net(x[:2])
    net.reset_memory()
    alone = net(x[1:2])
    assert not torch.allclose(both[1], alone[0])
    net.reset_memory()
    again = net(x[:2])
    assert torch.allclose(both, again)
    # gradients reach every parameter through the chained memory
    net.zero_grad()
    net.reset_memory()
    _grads_flow(net, net(x))


def test_memory_network_eval_is_order_independent():
    torch.manual_seed(1)
    net = NeuralMemoryNetwork(6, out_channels=2, hidden_size=5, memory_size=4, slots=3, plastic=True)
    net.train()
    net(torch.randn(4, 3, 6))
    stored = net.memory.clone()
    net.eval()
    x = torch.randn(5, 3, 6)
    a = net(x)
    b = net(x.flip(0)).flip(0)
    assert a.shape == (5, 2)
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.equal(net.memory, stored), "scoring must not change the stored memory"
    assert torch.equal(net(x[2:3]), net(x[2:3]))


def test_plastic_controller_trace():
    torch.manual_seed(0)
    ctrl = PlasticLinear(3, 2, plastic=True, activation="tanh")
    x = torch.randn(1, 3)
    y0, h1 = ctrl(x)  # empty trace: a plain linear layer
    assert torch.allclose(y0, torch.tanh(ctrl.linear(x)))
    eta = torch.sigmoid(ctrl.eta_logit)
    assert torch.allclose(h1[0], eta * torch.outer(y0[0], x[0]))
    y1, _ = ctrl(x, h1)  # the trace now changes the output
    assert not torch.allclose(y0, y1)
    (y1.sum()).backward()
    assert ctrl.alpha.grad is not None and ctrl.eta_logit.grad is not None
    # the network with plasticity keeps the traces like the memory
    net = NeuralMemoryNetwork(4, hidden_size=3, memory_size=2, slots=2, plastic=True).train()
    net(torch.randn(2, 3, 4))
    assert float(net.hebb_w.abs().sum()) > 0
    net.reset_memory()
    assert float(net.hebb_w.abs().sum()) == 0


# ----------------------------------------------------------------------------- front end
@pytest.mark.parametrize("rep,shape", [("raw", (2, 256)), ("frames", (4, 128)), ("stft", (2, 33, 25)),
                                       ("mel", (2, 16, 25)), ("mfcc", (2, 8, 25))])
def test_signal_prep_amplitude_invariant(rep, shape):
    prep = SignalPrep(representation=rep, frame_len=64, n_fft=64, hop=8, n_mels=16, n_mfcc=8, sfreq=128.0)
    x = torch.randn(3, 2, 256)
    out = prep(x)
    assert out.shape[1:] == shape == prep.out_shape((2, 256))
    assert torch.allclose(prep(5.0 * x + 3.0), out, atol=1e-3)
    assert torch.allclose(prep(0.01 * x), out, atol=1e-3)


def test_signal_prep_flat_channel_and_errors():
    x = torch.zeros(1, 2, 64)
    x[0, 0] = torch.randn(64)
    out = SignalPrep()(x)
    assert torch.isfinite(out).all() and float(out[0, 1].abs().max()) == 0.0
    from medad.errors import ConfigError

    with pytest.raises(ConfigError):
        SignalPrep(representation="mel")  # needs sfreq
    with pytest.raises(ConfigError):
        SignalPrep(normalize="global")
