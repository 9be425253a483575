"""Registry, option handling, stratified split and the open-set protocol (SPEC §3.7)."""

import numpy as np
import pytest
import torch

from unimargin.data import DatasetSplits, list_datasets, load_dataset, open_set_split, stratified_split_indices


def _toy(k=5, per_class=(6, 3), dim=3) -> DatasetSplits:
    g = torch.Generator().manual_seed(1)
    y_tr = torch.arange(k).repeat_interleave(per_class[0])
    y_te = torch.arange(k).repeat_interleave(per_class[1])
    # x encodes the label in feature 0 so leaks are visible from x alone
    x_tr = torch.cat([y_tr[:, None].float(), torch.randn(len(y_tr), dim - 1, generator=g)], 1)[:, None, :]
    x_te = torch.cat([y_te[:, None].float(), torch.randn(len(y_te), dim - 1, generator=g)], 1)[:, None, :]
    return DatasetSplits(x_tr, y_tr, x_te, y_te, [f"c{i}" for i in range(k)], name="toy")


def test_list_datasets_has_every_source():
    # other test modules may register datasets of their own: the built-ins must all be there
    assert {"mnist1d", "fashion-mnist", "digits", "cifar10", "cifar100", "folder", "npz", "csv"} <= set(list_datasets())


def test_unknown_dataset_name_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown dataset 'mnist2d'.*fashion-mnist.*mnist1d"):
        load_dataset("mnist2d")


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['bogus'\].*test_fraction"):
        load_dataset("digits", bogus=3)


def test_none_options_mean_default():
    a = load_dataset("digits", data_dir=None, cache_dir=None, seed=None, unknown_classes=None)
    b = load_dataset("digits")
    assert torch.equal(a.x_train, b.x_train) and a.x_unknown is None and a.unknown_class_names is None


def test_properties():
    s = _toy()
    assert s.in_shape == (1, 3) and s.num_classes == 5


def _reference_split_counts(y, frac):
    counts = np.bincount(y)
    return {c: (int(min(max(round(n * frac), 1), n - 1)) if n >= 2 else 0) for c, n in enumerate(counts)}


@pytest.mark.parametrize("frac", [0.2, 0.25, 0.5])
def test_stratified_split_matches_per_class_reference(frac):
    rng = np.random.default_rng(3)
    y = rng.integers(0, 7, size=301)
    y[:1] = 7  # a singleton class stays in train
    tr, te = stratified_split_indices(y, frac, seed=5)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == len(y)
    ref = _reference_split_counts(y, frac)
    for c in range(8):  # slow per-class reference
        assert int((y[te] == c).sum()) == ref[c]
    tr2, te2 = stratified_split_indices(y, frac, seed=5)
    assert np.array_equal(te, te2)
    _, te3 = stratified_split_indices(y, frac, seed=6)
    assert not np.array_equal(te, te3)


def test_stratified_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split_indices([0, 1, 0, 1], 1.0, 0)


@pytest.mark.parametrize("held", [["c1", "c3"], [1, 3], ["1", "3"], ["c3", 1]])
def test_open_set_split_no_leak_and_reindexes(held):
    base = _toy()
    s = open_set_split(base, held)
    assert s.classes == ["c0", "c2", "c4"] and s.unknown_class_names == ["c1", "c3"]
    orig_train = s.x_train[:, 0, 0].long()  # the original label is stored in x
    orig_test = s.x_test[:, 0, 0].long()
    for orig in (orig_train, orig_test):
        assert not torch.isin(orig, torch.tensor([1, 3])).any()
    # re-indexing: known class c2 (orig 2) -> 1, c4 -> 2
    mapping = {0: 0, 2: 1, 4: 2}
    assert [mapping[int(o)] for o in orig_train] == s.y_train.tolist()
    assert [mapping[int(o)] for o in orig_test] == s.y_test.tolist()
    # unknown samples: exactly the test samples of c1/c3, labelled by position in unknown_class_names
    orig_unk = s.x_unknown[:, 0, 0].long()
    assert sorted(orig_unk.tolist()) == sorted(base.y_test[(base.y_test == 1) | (base.y_test == 3)].tolist())
    assert torch.equal(s.y_unknown, (orig_unk == 3).long())
    assert len(s.x_train) == 18 and len(s.x_test) == 9 and len(s.x_unknown) == 6


def test_open_set_unknown_from_train_and_test():
    s = open_set_split(_toy(), ["c4"], unknown_from="train+test")
    assert len(s.x_unknown) == 9 and (s.x_train[:, 0, 0] != 4).all()
    with pytest.raises(ValueError, match="unknown_from"):
        open_set_split(_toy(), ["c4"], unknown_from="train")


def test_open_set_bad_requests():
    with pytest.raises(ValueError, match="unknown_classes: 'nope'.*c0"):
        open_set_split(_toy(), ["nope"])
    with pytest.raises(ValueError, match="unknown_classes: 7"):
        open_set_split(_toy(), [7])
    with pytest.raises(ValueError, match="fewer than 2 known"):
        open_set_split(_toy(), ["c0", "c1", "c2", "c3"])


def test_load_dataset_open_set_on_digits():
    full = load_dataset("digits")
    s = load_dataset("digits", unknown_classes=["8", "9"])
    assert s.classes == [str(i) for i in range(8)] and s.num_classes == 8
    assert s.y_train.max() == 7 and len(s.x_train) == int((full.y_train < 8).sum())
    assert torch.equal(s.x_unknown, full.x_test[full.y_test >= 8])
    assert torch.equal(s.y_unknown, full.y_test[full.y_test >= 8] - 8)
    # no image of a held-out class (train or test side) appears in the training set
    held = torch.cat([full.x_train[full.y_train >= 8], full.x_test[full.y_test >= 8]]).flatten(1)
    assert torch.cdist(s.x_train.flatten(1), held).min() > 0


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(3, 7),
    labels=st.lists(st.integers(0, 6), min_size=10, max_size=60),
    held_mask=st.lists(st.booleans(), min_size=7, max_size=7),
)
def test_open_set_property_no_leak_and_counts(k, labels, held_mask):
    y = torch.tensor(labels) % k
    y_tr, y_te = y, y.flip(0)
    x_tr, x_te = y_tr[:, None, None].float(), y_te[:, None, None].float() + 100  # x remembers label and split
    held = [c for c in range(k) if held_mask[c]]
    base = DatasetSplits(x_tr, y_tr, x_te, y_te, [f"c{i}" for i in range(k)])
    if not held or k - len(held) < 2 or not torch.isin(y_te, torch.tensor(held)).any():
        return
    held_t = torch.tensor(held)
    if torch.isin(y_tr, held_t).all():  # nothing known left to train on: a clear error, not an empty split
        with pytest.raises(ValueError, match="leaves the train split empty"):
            open_set_split(base, held)
        return
    if torch.unique(y_te[~torch.isin(y_te, held_t)]).numel() < 2:  # one known class left to test on
        with pytest.raises(ValueError, match="the test split holds only class .* at least 2 classes"):
            open_set_split(base, held)
        return
    s = open_set_split(base, held)
    known = [c for c in range(k) if c not in held]
    assert not torch.isin(s.x_train[:, 0, 0].long(), torch.tensor(held)).any()
    assert not torch.isin(s.x_test[:, 0, 0].long() - 100, torch.tensor(held)).any()
    assert (s.x_unknown[:, 0, 0] >= 100).all()  # by default only test samples are unknown
    assert len(s.x_train) + len(s.x_test) + len(s.x_unknown) == len(y_tr) + len(y_te) - int(torch.isin(y_tr, torch.tensor(held)).sum())
    assert torch.equal(torch.tensor(known)[s.y_train], s.x_train[:, 0, 0].long())
    assert torch.equal(torch.tensor(held)[s.y_unknown], s.x_unknown[:, 0, 0].long() - 100)


# ------------------------------------------------------------------ registration metadata (issue 10)
from unimargin.data import LAYOUTS, dataset_info, register_dataset, validation_split  # noqa: E402
from unimargin.data.registry import _REGISTRY  # noqa: E402


@pytest.fixture
def registered():
    """Register test datasets from outside the package; unregister afterwards."""
    names = []

    def add(name, **meta):
        def deco(loader):
            register_dataset(name, **meta)(loader)
            names.append(name)
            return loader

        return deco

    yield add
    for n in names:
        _REGISTRY.pop(n, None)


def _blobs(n_per=6, k=3, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(k).repeat_interleave(n_per)
    return torch.randn(len(y), d, generator=g) + 3 * y[:, None].float(), y


def test_builtin_metadata():
    expected = {"mnist1d": ("cnn1d", ("signal",)), "fashion-mnist": ("cnn", ("image",)),
                "digits": ("mlp", ("image",)), "cifar10": ("resnet18", ("image",)),
                "cifar100": ("resnet18", ("image",)), "folder": ("cnn", ("image",)),
                "npz": ("mlp", ("tabular", "signal", "image"))}
    for name, (model, layout) in expected.items():
        info = dataset_info(name)
        assert (info.default_model, info.layout) == (model, layout), name
    assert dataset_info("cifar10").augmentation is not None and dataset_info("digits").augmentation is None
    assert "test_fraction" in dataset_info("digits").options and "data_dir" in dataset_info("npz").options
    assert dataset_info("mnist1d").description.startswith("MNIST-1D")
    with pytest.raises(ValueError, match="unknown dataset 'nope'; valid datasets"):
        dataset_info("nope")


def test_dataset_registered_outside_the_package_loads_with_its_metadata(registered):
    from unimargin.data.transforms import default_augmentation
    from unimargin.models import build_model, default_model

    def flip(x, generator=None):
        return x.flip(-1)

    @registered("toy-tabular", default_model="mlp", layout="tabular", augmentation=flip)
    def load_toy(scale: float = 1.0):
        """Toy blobs."""
        x, y = _blobs()
        return DatasetSplits(x * scale, y, x, y, ["a", "b", "c"])

    s = load_dataset("toy-tabular", scale=2.0, val_fraction=0.2, val_seed=1)
    assert s.layout == "tabular" and s.in_shape == (4,) and len(s.x_val) == 3
    assert default_model("toy-tabular") == "mlp" and default_augmentation("toy-tabular") is flip
    assert build_model(default_model("toy-tabular"), s.in_shape, 8)(s.x_train).shape == (len(s.x_train), 8)
    with pytest.raises(ValueError, match=r"does not take option\(s\) \['image_size'\]; valid options: scale"):
        load_dataset("toy-tabular", image_size=8)


def test_declared_layout_is_validated(registered):
    @registered("toy-says-image", default_model="cnn", layout="image")
    def load_bad():
        x, y = _blobs()
        return DatasetSplits(x, y, x, y, ["a", "b", "c"])

    with pytest.raises(ValueError, match=r"registered with layout image \(\(N, C, H, W\)\).*\(18, 4\) \(tabular\)"):
        load_dataset("toy-says-image")


@pytest.mark.parametrize(
    "meta,match",
    [
        (dict(default_model="mlp", layout="volume"), "layout must be one or more of"),
        (dict(default_model="mlp", layout=()), "layout must be one or more of"),
        (dict(default_model="vgg", layout="tabular"), "default_model must be one of"),
        (dict(default_model="mlp", layout="tabular", augmentation=3), "augmentation must be callable"),
    ],
)
def test_bad_registration(meta, match):
    with pytest.raises(ValueError, match=match):
        register_dataset("toy-bad", **meta)


def test_registration_rejects_duplicates_and_shared_option_names(registered):
    with pytest.raises(ValueError, match="'digits' is already registered"):
        register_dataset("digits", default_model="mlp", layout="image")(lambda: None)
    with pytest.raises(ValueError, match=r"options \['val_fraction'\] are handled by load_dataset"):
        register_dataset("toy-clash", default_model="mlp", layout="tabular")(lambda val_fraction=0.1: None)
    assert "toy-clash" not in list_datasets() and set(LAYOUTS) == {"tabular", "signal", "image"}


def test_entry_point_default_model_is_accepted(registered):
    @registered("toy-ep", default_model="mypkg.nets:build", layout="tabular")
    def load_ep():
        x, y = _blobs()
        return DatasetSplits(x, y, x, y, ["a", "b", "c"])

    assert dataset_info("toy-ep").default_model == "mypkg.nets:build"


# ------------------------------------------------------------------ validation split (SPEC §3.9)
@pytest.mark.parametrize("frac", [0.1, 0.25])
def test_validation_split_matches_reference_and_is_seeded(frac):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, size=250)
    y[:1] = 6  # a singleton class stays in train
    y[1:3] = 7  # a class of 2 sends exactly one to validation
    tr, va = validation_split(y, frac, seed=3)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(y)
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)
    counts = np.bincount(y)
    for c, n in enumerate(counts):  # per-class loop reference
        want = 0 if n < 2 else min(max(round(n * frac), 1), n - 1)
        assert int((y[va] == c).sum()) == want
    assert np.array_equal(va, validation_split(torch.from_numpy(y), frac, seed=3)[1])
    assert not np.array_equal(va, validation_split(y, frac, seed=4)[1])


@pytest.mark.parametrize("frac", [0, 1, 1.5, -0.1, "a", None, True])
def test_validation_split_bad_fraction_names_val_fraction(frac):
    with pytest.raises(ValueError, match="val_fraction must be in"):
        validation_split([0, 1, 0, 1], frac, 0)


def test_load_dataset_val_fraction_is_a_stratified_subset_of_train():
    full = load_dataset("digits")
    s = load_dataset("digits", val_fraction=0.1, val_seed=7)
    assert len(s.x_train) + len(s.x_val) == len(full.x_train) and torch.equal(s.x_test, full.x_test)
    tr, va = validation_split(full.y_train, 0.1, 7)
    assert torch.equal(s.x_val, full.x_train[va]) and torch.equal(s.y_train, full.y_train[tr])
    assert torch.unique(s.y_val).numel() == 10
    again = load_dataset("digits", val_fraction=0.1, val_seed=7)
    assert torch.equal(again.x_val, s.x_val)
    assert "x_val" not in repr(full) and "val=(" in repr(s)


def test_val_split_after_open_set_holds_only_known_classes():
    s = load_dataset("digits", unknown_classes=["9"], val_fraction=0.2, val_seed=0)
    assert s.num_classes == 9 and s.y_val.max() == 8 and torch.unique(s.y_val).numel() == 9


def test_dataset_own_validation_split_is_kept_and_open_set_filters_it():
    x, y = _blobs(n_per=4)
    base = DatasetSplits(x, y, x + 100, y, ["a", "b", "c"], x_val=x + 200, y_val=y, name="toy")
    s = open_set_split(base, ["b"])
    assert torch.equal(s.y_val, torch.tensor([0] * 4 + [1] * 4)) and (s.x_unknown > 50).all()


def test_one_class_test_split_is_an_error_before_training(registered):
    @registered("toy-one-test", default_model="mlp", layout="tabular")
    def load_one():
        x, y = _blobs()
        return DatasetSplits(x, y, x[:3], y[:3], ["a", "b", "c"])  # test = 3 samples of class a

    with pytest.raises(ValueError, match="the test split holds only class 'a' \\(3 samples\\); it needs at least 2"):
        load_dataset("toy-one-test")


def test_one_class_validation_split_is_an_error(registered):
    @registered("toy-one-val", default_model="mlp", layout="tabular")
    def load_one():
        x, y = _blobs()
        return DatasetSplits(x, y, x, y, ["a", "b", "c"], x_val=x[-2:], y_val=y[-2:])

    with pytest.raises(ValueError, match="the val split holds only class 'c'.*val_fraction"):
        load_dataset("toy-one-val")
    with pytest.raises(ValueError, match="x_val and y_val must be given together"):
        from unimargin.data.registry import _validate

        x, y = _blobs()
        _validate(DatasetSplits(x, y, x, y, ["a", "b", "c"], x_val=x))


def test_preprocessing_records_what_predict_needs():
    s = load_dataset("digits", unknown_classes=["0"])
    p = s.preprocessing
    assert p["dataset"] == "digits" and p["layout"] == "image" and p["in_shape"] == [1, 8, 8]
    assert p["classes"] == [str(i) for i in range(1, 10)]
