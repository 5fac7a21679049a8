"""The network on variable-length sequences: NaN padding, masked layers, per-batch cropping, embed."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from padding import pad_with_nan, variable_length

from aqtrack.config import Config
from aqtrack.data.dataset import lengths_of, load_data
from aqtrack.errors import DataError
from aqtrack.training.distributed import Shards
from aqtrack.training.loop import build_trainer, evaluate, sharded_loader, train_one_epoch
from aqtrack.training.model import (
    MaskedBatchNorm1d,
    ModelSpec,
    NanPaddedNet,
    build_model,
    embed,
    trailing_lengths,
)

SPEC = ModelSpec(in_channels=8, num_classes=4, hidden=16, dropout=0.0)


def trained_like(seed: int = 0) -> torch.nn.Module:
    """A network with non-trivial weights, normalisation and running statistics, in eval mode."""
    torch.manual_seed(seed)
    net = build_model(SPEC)
    with torch.no_grad():
        net.mean.normal_()
        net.std.uniform_(0.5, 2.0)
        for module in net.modules():
            if isinstance(module, MaskedBatchNorm1d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.3)
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    return net.eval()


def sequences(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, SPEC.in_channels, generator=g) * 2 + 1 for n in lengths]


def padded(seqs: list[torch.Tensor], frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A NaN-padded batch [B, frames, C] and its lengths [B]."""
    x = torch.full((len(seqs), frames, SPEC.in_channels), float("nan"))
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    return x, torch.tensor([len(s) for s in seqs])


def test_lengths_of_counts_frames_up_to_the_last_with_any_value():
    x = np.zeros((4, 6, 2), dtype=np.float32)
    x[1, 3:] = np.nan  # 3 real frames
    x[2, 5, 0] = np.nan  # a frame with one value left still counts: 6
    x[3] = np.nan  # nothing real
    assert lengths_of(x).tolist() == [6, 3, 6, 0]
    assert lengths_of(x).dtype == np.int64
    assert trailing_lengths(torch.from_numpy(x)).tolist() == [6, 3, 6, 0]


def test_normalisation_ignores_the_nan_padding():
    seqs = sequences([7, 30, 19])
    x, lengths = padded(seqs, 50)
    net = build_model(SPEC)

    net.set_normalization(x)  # lengths from the NaN padding

    frames = torch.cat(seqs)  # the real frames alone [56, C]
    assert torch.allclose(net.mean, frames.mean(dim=0), atol=1e-6)
    assert torch.allclose(net.std, frames.std(dim=0), atol=1e-6)
    again = build_model(SPEC)
    again.set_normalization(torch.nan_to_num(x, nan=1e6), lengths)  # whatever is past the lengths
    assert torch.equal(again.mean, net.mean) and torch.equal(again.std, net.std)


@pytest.mark.parametrize("lengths", [[40, 13, 27], [40, 40, 9, 1]])
def test_a_sequences_logits_do_not_depend_on_how_much_padding_shares_its_batch(lengths):
    net = trained_like()
    seqs = sequences(lengths)
    with torch.no_grad():
        alone = net(seqs[0][None])  # unpadded, the plain path
        for factor in (1, 3, 10):
            x, real = padded(seqs, factor * lengths[0])
            logits = net(x, real)
            assert torch.allclose(logits[0], alone[0], rtol=1e-5, atol=1e-5), factor
            for i, s in enumerate(seqs):  # every other sequence too, as if alone
                assert torch.allclose(logits[i], net(s[None])[0], rtol=1e-5, atol=1e-5), (factor, i)
            assert torch.allclose(NanPaddedNet(net)(x), logits, rtol=1e-6, atol=1e-6)  # lengths from NaN


def training_step(net: torch.nn.Module, x: torch.Tensor, lengths: torch.Tensor | None, y: torch.Tensor):
    """One forward and backward in train mode: (running statistics, gradients) it leaves."""
    net = copy.deepcopy(net).train()
    F.cross_entropy(net(x, lengths), y).backward()
    stats = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    return stats, {k: p.grad.clone() for k, p in net.named_parameters()}


def test_a_training_steps_batch_statistics_and_gradients_do_not_depend_on_the_padding():
    net = trained_like()
    seqs = sequences([33, 8, 21, 33, 17])
    y = torch.tensor([0, 1, 2, 3, 1])
    little = training_step(net, *padded(seqs, 33), y)
    for frames in (50, 330):
        stats, grads = training_step(net, *padded(seqs, frames), y)
        for k, v in little[0].items():
            assert torch.allclose(stats[k], v, rtol=1e-5, atol=1e-6), (frames, k)
        for k, g in little[1].items():
            assert torch.allclose(grads[k], g, rtol=1e-4, atol=1e-6), (frames, k)
            assert torch.isfinite(grads[k]).all(), k
    # No padding at all: the masked path (all lengths T) agrees with the plain one (lengths None).
    x, full = padded(sequences([20, 20, 20]), 20)
    masked, plain = (training_step(net, x, lengths, y[:3]) for lengths in (full, None))
    for part in (0, 1):  # statistics, gradients
        for key, value in plain[part].items():
            assert torch.allclose(masked[part][key].double(), value.double(), rtol=1e-4, atol=1e-6), key


def test_masked_batchnorm_is_batchnorm1d_over_the_real_frames():
    torch.manual_seed(0)
    masked, plain = MaskedBatchNorm1d(3, momentum=0.3), torch.nn.BatchNorm1d(3, momentum=0.3)
    assert masked.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(4, 3, 10) * 3 + 2
    lengths = torch.tensor([10, 2, 7, 5])
    mask = torch.arange(10) < lengths[:, None]
    real = torch.cat([x[i, :, :n] for i, n in enumerate(lengths)], dim=1)  # [C, 24]

    out = masked(x, mask)

    expected = plain(real.T).T  # the real frames as one [24, C] batch
    got = torch.cat([out[i, :, :n] for i, n in enumerate(lengths)], dim=1)
    assert torch.allclose(got, expected, atol=1e-5)
    for key, value in plain.state_dict().items():  # unbiased running variance over the 24 real frames
        assert torch.allclose(masked.state_dict()[key].double(), value.double(), atol=1e-6), key
    masked.eval(), plain.eval()
    assert torch.allclose(masked(x, mask), plain(x), atol=1e-6)  # eval: the running statistics
    momentum_none = MaskedBatchNorm1d(3, momentum=None)
    momentum_none(x, mask), momentum_none(x[:2], mask[:2])
    assert int(momentum_none.num_batches_tracked) == 2


def test_loader_cuts_each_batch_to_its_longest_sequence_and_passes_lengths_only_when_padded():
    lengths = np.array([5, 9, 12, 3, 12, 12])
    x = pad_with_nan(np.random.default_rng(0).normal(size=(6, 20, 2)).astype(np.float32), lengths)
    y = np.arange(6)

    batches = list(sharded_loader(x, y, Shards(6, 2), None, 0, lengths))

    assert [tuple(b[0].shape) for b in batches] == [(2, 9, 2), (2, 12, 2), (2, 12, 2)]
    assert batches[0][2].tolist() == [5, 9] and batches[1][2].tolist() == [12, 3]
    assert batches[2][2] is None  # both 12 frames long: no padding, the plain path
    for xb, _, _ in sharded_loader(x[:, :12], y, Shards(6, 2), None, 0):  # no lengths: everything fills T
        assert xb.shape[1] == 12
    x[3] = np.nan  # a sequence with no real frame is refused, naming it
    no_frame = r"^1 sequence\(s\) have no real frame .* \(first: sequence 3, length 0\)"
    with pytest.raises(DataError, match=no_frame):
        sharded_loader(x, y, Shards(6, 2), None, 0, lengths_of(x))


def test_embed_of_nan_padded_sequences_equals_each_sequence_alone():
    net = trained_like()
    lengths = [12, 50, 31, 1, 50]
    seqs = sequences(lengths)
    x, _ = padded(seqs, 64)

    features, logits = embed(net, x.numpy(), batch_size=2)

    assert features.shape == (5, 2 * SPEC.hidden) and np.isfinite(features).all()
    with torch.no_grad():
        for i, s in enumerate(seqs):
            np.testing.assert_allclose(features[i], net.features(s[None])[0].numpy(), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(logits[i], net(s[None])[0].numpy(), rtol=1e-5, atol=1e-5)
    explicit = embed(net, x.numpy(), lengths=np.array(lengths))[0]
    np.testing.assert_allclose(explicit, features, rtol=1e-6, atol=1e-6)


def test_training_on_variable_length_data_validates_each_sequence_as_if_alone(tiny):
    cfg = Config.from_dict({**tiny, "dropout": 0.0})
    fixed = load_data("synthetic", n_train=64, n_val=32, val_fraction=0.2, seed=0)
    data = variable_length(fixed, low=30)
    trainer = build_trainer(cfg, data, torch.device("cpu"))
    trainer.train_batches.set_epoch(1)

    metrics, batch_losses = train_one_epoch(trainer)
    val_loss = evaluate(trainer.model, trainer.val_loader, trainer.device).loss

    assert all(np.isfinite(v) for v in [*metrics.values(), *batch_losses, val_loss])
    assert torch.isfinite(trainer.model.mean).all() and torch.isfinite(trainer.model.std).all()
    lengths = lengths_of(data.x_val)
    assert lengths.min() < 100 and lengths.max() == 100
    with torch.no_grad():
        alone = [
            F.cross_entropy(trainer.model(torch.from_numpy(x[None, :n])), torch.tensor([y])).item()
            for x, n, y in zip(data.x_val, lengths, data.y_val, strict=True)
        ]
    assert val_loss == pytest.approx(np.mean(alone), rel=1e-5)
