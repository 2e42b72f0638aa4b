"""Loader: batches, reproducible shuffling, exact resumption mid-epoch, augmentation, limit."""

from __future__ import annotations

import pytest
import torch

from absnet.data import DATASETS, Loader, Split, augment_batch


def _split(n: int = 103, c: int = 3, hw: int = 8, scale: float = 255.0) -> Split:
    """Random images (never left-right symmetric) with label = index, so batches can be traced back."""
    x = torch.randint(0, 256, (n, c, hw, hw), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    return Split(x, torch.arange(n), DATASETS["cifar10"], "memory", scale)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_batches_are_float_in_0_1_with_int64_labels_and_a_short_last_batch():
    split = _split(scale=255.0)
    loader = Loader(split, 25, shuffle=False)
    batches = list(loader.epoch())
    assert len(loader) == len(batches) == 5
    assert [len(y) for _, y in batches] == [25, 25, 25, 25, 3]
    x, y = batches[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and tuple(x.shape) == (25, 3, 8, 8)
    assert torch.equal(x, split.x[:25].float() / 255) and y.tolist() == list(range(25))
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    dropped = Loader(split, 25, shuffle=False, drop_last=True)
    assert len(dropped) == 4 and [len(y) for _, y in dropped] == [25] * 4


def test_every_example_appears_exactly_once_per_shuffled_epoch():
    loader = Loader(_split(), 10, shuffle=True, generator=_gen(0), augment="crop_flip")
    for _ in range(2):
        seen = torch.cat([y for _, y in loader.epoch()])
        assert sorted(seen.tolist()) == list(range(103)) and seen.tolist() != list(range(103))


def test_shuffle_is_reproducible_from_a_seeded_generator_and_changes_between_epochs():
    def labels(loader: Loader) -> list[int]:
        return torch.cat([y for _, y in loader.epoch()]).tolist()

    a = Loader(_split(), 16, shuffle=True, generator=_gen(3))
    b = Loader(_split(), 16, shuffle=True, generator=_gen(3))
    first = labels(a)
    assert first == labels(b)
    assert labels(a) != first  # the next epoch draws a new permutation
    a.generator.manual_seed(3)  # re-seeding before an epoch replays it
    assert labels(a) == first


@pytest.mark.parametrize("augment", ["none", "flip", "crop", "crop_flip"])
@pytest.mark.parametrize("start", [1, 4, 10, 11])
def test_start_batch_resumes_with_exactly_the_same_remaining_batches(augment, start):
    loader = Loader(_split(), 10, shuffle=True, generator=_gen(7), augment=augment)
    full = list(loader.epoch())
    after_full = list(loader.epoch())
    loader.generator.manual_seed(7)
    resumed = list(loader.epoch(start_batch=start))
    assert len(resumed) == max(0, len(full) - start)
    for (x1, y1), (x2, y2) in zip(full[start:], resumed):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # the call consumed the generator exactly as a full epoch does: the next epoch is the same too
    for (x1, y1), (x2, y2) in zip(after_full, loader.epoch()):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_permutation_is_drawn_at_the_call_not_at_the_first_batch():
    loader = Loader(_split(), 10, shuffle=True, generator=_gen(1))
    it = loader.epoch()
    loader.generator.manual_seed(99)  # must not affect the epoch already started
    reference = Loader(_split(), 10, shuffle=True, generator=_gen(1))
    assert torch.equal(next(it)[1], next(reference.epoch())[1])


def test_flip_mirrors_about_half_of_the_images_and_leaves_the_rest():
    x = _split(n=200).x
    out = augment_batch(x, "flip", _gen(0))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert bool((flipped ^ same).all()) and 60 < int(flipped.sum()) < 140


def test_crop_is_a_window_of_the_zero_padded_image():
    x = _split(n=64, hw=12).x
    out = augment_batch(x, "crop", _gen(0), padding=4)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    offsets = set()
    for o, p in zip(out, padded):
        hits = [(dy, dx) for dy in range(9) for dx in range(9) if torch.equal(o, p[:, dy:dy + 12, dx:dx + 12])]
        assert hits, "a crop must be a window of the padded image"
        offsets.add(hits[0])
    assert (len(offsets) > 20 and (4, 4) in offsets) or len(offsets) > 20  # many different offsets
    assert not torch.equal(out, x)


def test_loader_augmentation_changes_images_but_not_labels():
    split = _split()
    plain = next(Loader(split, 103, shuffle=False).epoch())
    for augment in ("flip", "crop", "crop_flip"):
        x, y = next(Loader(split, 103, shuffle=False, generator=_gen(0), augment=augment).epoch())
        assert x.shape == plain[0].shape and torch.equal(y, plain[1]) and not torch.equal(x, plain[0])


def test_limit_keeps_the_first_examples_before_shuffling():
    loader = Loader(_split(), 8, shuffle=True, generator=_gen(0), limit=20)
    assert loader.num_examples == 20 and len(loader) == 3
    assert sorted(torch.cat([y for _, y in loader.epoch()]).tolist()) == list(range(20))
    assert Loader(_split(), 8, shuffle=False, limit=1000).num_examples == 103


def test_scale_16_maps_digit_pixels_to_0_1():
    split = _split(c=1, scale=16.0)
    split.x.clamp_(max=16)
    x, _ = next(Loader(split, 103, shuffle=False).epoch())
    assert float(x.max()) == 1.0


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="augment"):
        Loader(_split(), 8, shuffle=False, augment="rotate")
    with pytest.raises(ValueError, match="batch_size"):
        Loader(_split(), 0, shuffle=False)
    with pytest.raises(ValueError, match="start_batch"):
        Loader(_split(), 8, shuffle=False).epoch(start_batch=-1)
