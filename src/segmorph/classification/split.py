"""Stratified grouped splits: a hold-out split and k folds that never put one group on both sides.

A *group* is a set of images that must stay together (one patient, near-duplicate images). Splitting works on
groups: each group takes the class most of its images have, and within each class the groups are shuffled with
the seed and dealt out, so every split keeps the class ratios roughly and the same seed always gives the same
split. Images without a group are their own group.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from segmorph.errors import SegmorphError


def _groups_by_class(labels: Sequence[int], groups: Sequence[str]) -> dict[int, list[tuple[str, list[int]]]]:
    """Class -> [(group, member indices)], groups sorted by name, each under its majority class (lowest on a tie)."""
    labels = [int(v) for v in labels]
    if len(labels) != len(groups):
        raise ValueError(f"groups: expected {len(labels)} values (one per label), got {len(groups)}")
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(str(group), []).append(index)
    by_class: dict[int, list[tuple[str, list[int]]]] = {}
    for group in sorted(members):
        counts = Counter(labels[i] for i in members[group])
        majority = min(counts, key=lambda k: (-counts[k], k))
        by_class.setdefault(majority, []).append((group, members[group]))
    return by_class


def _shuffled(items: list, rng: np.random.Generator) -> list:
    return [items[i] for i in rng.permutation(len(items))]


def _check_enough_groups(by_class: dict[int, list], needed: int, class_names: Sequence[str] | None) -> None:
    for label, items in sorted(by_class.items()):
        if len(items) < needed:
            name = class_names[label] if class_names else label
            raise SegmorphError(f"class {name!r} has {len(items)} group(s); a split needs at least {needed}")


def grouped_holdout_split(
    labels: Sequence[int],
    groups: Sequence[str],
    val_fraction: float = 0.2,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> tuple[list[int], list[int]]:
    """Hold out about ``val_fraction`` of each class's images, whole groups only.

    Within each class, shuffled groups go to validation until its images reach ``val_fraction`` of the class
    (so the held-out share is at least ``val_fraction``, overshooting by less than one group), keeping at least
    one group of the class on each side.

    Args:
        labels: ``(N,)`` class index per image.
        groups: ``(N,)`` group name per image.
        val_fraction: Share of images to hold out, in (0, 1).
        seed: Seed of the shuffle.
        class_names: Names used in error messages.

    Returns:
        ``(train_indices, val_indices)``, each sorted.

    Raises:
        SegmorphError: A class has fewer than two groups.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a value in (0, 1), got {val_fraction}")
    by_class = _groups_by_class(labels, groups)
    _check_enough_groups(by_class, 2, class_names)
    rng = np.random.default_rng(seed)
    validation: list[int] = []
    for label in sorted(by_class):
        items = _shuffled(by_class[label], rng)
        target = val_fraction * sum(len(m) for _, m in items)
        taken = 0
        for count, (_, indices) in enumerate(items):
            if taken >= target or count == len(items) - 1:
                break
            validation.extend(indices)
            taken += len(indices)
    val_set = set(validation)
    return [i for i in range(len(labels)) if i not in val_set], sorted(val_set)


def grouped_kfold(
    labels: Sequence[int],
    groups: Sequence[str],
    num_folds: int = 5,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> list[list[int]]:
    """Deal whole groups into ``num_folds`` folds, class by class, balancing each class's image count.

    Groups of a class are shuffled, then taken largest first (a stable sort, so equal sizes keep the shuffled
    order) and each goes to the fold holding the fewest images of that class (then the fewest images, then the
    lowest fold number).

    Returns:
        ``num_folds`` sorted lists of image indices; together they hold every image exactly once.

    Raises:
        SegmorphError: A class has fewer groups than folds.
    """
    if num_folds < 2:
        raise ValueError(f"num_folds: expected at least 2, got {num_folds}")
    by_class = _groups_by_class(labels, groups)
    _check_enough_groups(by_class, num_folds, class_names)
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(num_folds)]
    for label in sorted(by_class):
        items = sorted(_shuffled(by_class[label], rng), key=lambda item: -len(item[1]))
        class_counts = [0] * num_folds
        for _, indices in items:
            fold = min(range(num_folds), key=lambda f: (class_counts[f], len(folds[f]), f))
            folds[fold].extend(indices)
            class_counts[fold] += len(indices)
    return [sorted(fold) for fold in folds]


def grouped_fold_split(
    labels: Sequence[int],
    groups: Sequence[str],
    fold: int,
    num_folds: int = 5,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> tuple[list[int], list[int]]:
    """``(train_indices, val_indices)`` with fold ``fold`` of :func:`grouped_kfold` held out."""
    if not 0 <= fold < num_folds:
        raise SegmorphError(f"fold must be in 0..{num_folds - 1}, got {fold}")
    val = grouped_kfold(labels, groups, num_folds, seed, class_names)[fold]
    val_set = set(val)
    return [i for i in range(len(labels)) if i not in val_set], val


def labelled_subset(
    labels: Sequence[int],
    groups: Sequence[str],
    fraction: float,
    seed: int = 0,
) -> list[int]:
    """Keep about ``fraction`` of each class's images, whole groups only: the labelled part of a training set.

    Within each class (a group counts under its majority class, as in the splits), shuffled groups are kept
    until their images reach ``fraction`` of the class (at least one group, overshooting by less than one
    group). A class present only as a minority inside other classes' groups gets its smallest group added,
    so every class keeps at least one image.

    Args:
        labels: ``(N,)`` class index per image.
        groups: ``(N,)`` group name per image.
        fraction: Share to keep, in (0, 1]; 1 keeps every image.
        seed: Seed of the shuffle: the same seed keeps the same images.

    Returns:
        Sorted indices of the images kept.

    Raises:
        SegmorphError: ``fraction`` outside (0, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise SegmorphError(f"labelled fraction: expected a share in (0, 1], got {fraction}")
    if fraction >= 1.0:
        return list(range(len(labels)))
    by_class = _groups_by_class(labels, groups)
    rng = np.random.default_rng(seed)
    kept: list[int] = []
    for label in sorted(by_class):
        items = _shuffled(by_class[label], rng)
        target = fraction * sum(len(m) for _, m in items)
        taken = 0
        for _, indices in items:
            if taken >= target:
                break
            kept.extend(indices)
            taken += len(indices)
    present = {int(labels[i]) for i in kept}
    for label in sorted({int(v) for v in labels} - present):
        holding = [(len(m), g, m) for items in by_class.values() for g, m in items if label in _classes_of(m, labels)]
        kept.extend(min(holding)[2])
    return sorted(set(kept))


def _classes_of(indices: list[int], labels: Sequence[int]) -> set[int]:
    return {int(labels[i]) for i in indices}
