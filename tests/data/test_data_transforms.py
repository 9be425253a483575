"""Batched transforms against slow per-sample references."""

import numpy as np
import pytest
import torch

from unimargin.data.transforms import feature_stats, default_augmentation, normalize, random_crop, random_horizontal_flip


def test_feature_stats_per_channel_against_numpy():
    x = torch.randn(7, 3, 5, 4) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1) + torch.tensor([0.0, 3.0, -1.0]).view(1, 3, 1, 1)
    mean, std = feature_stats(x)
    a = x.numpy().astype(np.float64)
    for c in range(3):
        assert mean[c].item() == pytest.approx(a[:, c].mean(), abs=1e-6)
        assert std[c].item() == pytest.approx(a[:, c].std(), abs=1e-6)
    z = normalize(x, mean, std)
    zm, zs = feature_stats(z)
    assert torch.allclose(zm, torch.zeros(3), atol=1e-5) and torch.allclose(zs, torch.ones(3), atol=1e-5)


def test_normalize_1d_and_constant_channel():
    x = torch.randn(4, 2, 9)
    x[:, 1] = 5.0
    mean, std = feature_stats(x)
    z = normalize(x, mean, std)
    assert torch.isfinite(z).all() and torch.equal(z[:, 1], torch.zeros(4, 9))
    with pytest.raises(ValueError, match=r"mean/std must have shape \(2,\)"):
        normalize(x, torch.zeros(3), torch.ones(3))


def _windows_2d(padded, h, w):
    return {(i, j): padded[:, i : i + h, j : j + w] for i in range(padded.shape[1] - h + 1) for j in range(padded.shape[2] - w + 1)}


def test_random_crop_2d_is_a_window_of_the_padded_image():
    x = torch.rand(16, 3, 6, 5) + 1  # > 0 so padding zeros are recognisable
    g = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, g)
    assert out.shape == x.shape
    offsets = set()
    for n in range(len(x)):  # brute-force reference: search every offset
        padded = torch.nn.functional.pad(x[n], (2, 2, 2, 2))
        hits = [k for k, win in _windows_2d(padded, 6, 5).items() if torch.equal(win, out[n])]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 1  # offsets differ between samples
    assert torch.equal(random_crop(x, 2, torch.Generator().manual_seed(0)), out)  # reproducible


def test_random_crop_1d():
    x = torch.rand(8, 2, 10) + 1
    out = random_crop(x, 3, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    for n in range(8):
        padded = torch.nn.functional.pad(x[n], (3, 3))
        assert sum(torch.equal(padded[:, s : s + 10], out[n]) for s in range(7)) == 1


def test_random_horizontal_flip():
    x = torch.rand(200, 1, 3, 4)
    out = random_horizontal_flip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
    assert (flipped ^ kept).all()  # each sample is either itself or its mirror image
    assert torch.equal(out[0, 0, :, 0], x[0, 0, :, 3]) or torch.equal(out[0], x[0])
    assert 60 < int(flipped.sum()) < 140
    assert torch.equal(random_horizontal_flip(x, p=1.0), x.flip(-1)) and torch.equal(random_horizontal_flip(x, p=0.0), x)


def test_feature_stats_tabular_is_per_feature_against_numpy():
    """(N, d) features are standardised per feature (issue 12: one number for all features
    made wine lose 14 points), computed against numpy's column mean/std."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=g) * torch.tensor([1.0, 100.0, 0.01, 5.0]) + torch.tensor([0.0, 1e3, -2.0, 7.0])
    mean, std = feature_stats(x)
    a = x.numpy().astype(np.float64)
    assert np.allclose(mean.numpy(), a.mean(0), rtol=1e-6) and np.allclose(std.numpy(), a.std(0), rtol=1e-5)
    z = normalize(x, mean, std)
    assert np.allclose(z.numpy().mean(0), 0, atol=1e-5) and np.allclose(z.numpy().std(0), 1, atol=1e-4)


@pytest.mark.parametrize("shape", [(6, 3), (6, 3, 5), (6, 3, 2, 2)])
@pytest.mark.parametrize("value", [0.0, 5.0, 1e6])
def test_constant_feature_gets_std_one_and_no_nan(shape, value):
    x = torch.randn(shape)
    x[:, 1] = value
    mean, std = feature_stats(x)
    assert std[1].item() == 1.0 and mean[1].item() == pytest.approx(value)
    z = normalize(x, mean, std)
    assert torch.isfinite(z).all() and torch.equal(z[:, 1], torch.zeros_like(z[:, 1]))


def test_feature_stats_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"\(N, d\).*\(N, C, L\).*\(N, C, H, W\)"):
        feature_stats(torch.zeros(5))
    with pytest.raises(ValueError, match="empty"):
        feature_stats(torch.zeros(0, 3))


def test_default_augmentation():
    assert default_augmentation("mnist1d") is None and default_augmentation("fashion-mnist") is None
    assert default_augmentation("digits") is None and default_augmentation("npz") is None
    aug = default_augmentation("cifar10")
    x = torch.rand(4, 3, 32, 32)
    y = aug(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.equal(y, x)
    assert default_augmentation("cifar100") is not None


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(N, C, L\) or \(N, C, H, W\)"):
        random_crop(torch.zeros(3, 4), 1)
    with pytest.raises(ValueError, match="padding"):
        random_crop(torch.zeros(2, 1, 4, 4), -1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        feature_stats(np.zeros((2, 1, 3)))
