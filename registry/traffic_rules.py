"""Rules of a traffic policy that several of its parts share: percentages, an experiment's
variants, and the experiment layer's disjoint ranges (see registry/traffic.py)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from registry.errors import InvalidRequest

if TYPE_CHECKING:
    from registry.traffic import Experiment

_EPS = 1e-6


def check_percent(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise InvalidRequest(f"{where}: expected a percentage from 0 to 100, got {value!r}")
    return float(value)


def check_experiment(e: Experiment, where: str) -> None:
    if len(e.variants) < 2:
        raise InvalidRequest(f"{where}.variants: an experiment needs at least two variants")
    for j, v in enumerate(e.variants):
        check_percent(v.weight, f"{where}.variants[{j}].weight")
    total = sum(v.weight for v in e.variants)
    if abs(total - 100.0) > _EPS:
        raise InvalidRequest(f"{where}.variants: weights must sum to 100, got {total:g}")
    if len({v.name for v in e.variants}) != len(e.variants):
        raise InvalidRequest(f"{where}.variants: variant names must be unique")
    if not 0 < e.share <= 100:
        raise InvalidRequest(
            f"{where}.share: expected a percentage above 0 and at most 100, got {e.share:g}"
        )
    if e.offset < -_EPS or e.end > 100 + _EPS:
        raise InvalidRequest(
            f"{where}.offset: its range [{e.offset:g}, {e.end:g}) must lie within [0, 100)"
        )


def check_ranges(experiments: Sequence[Experiment]) -> None:
    total = sum(e.share for e in experiments)
    if total > 100 + _EPS:
        shares = ", ".join(f"'{e.id}' {e.share:g}%" for e in experiments)
        raise InvalidRequest(
            f"experiments: shares must sum to at most 100, got {total:g} ({shares})"
        )
    ordered = sorted(experiments, key=lambda e: e.offset)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.offset < a.end - _EPS:
            raise InvalidRequest(
                f"experiments: '{b.id}' [{b.offset:g}, {b.end:g}) overlaps "
                f"'{a.id}' [{a.offset:g}, {a.end:g}); each experiment needs its own range"
            )


def free_ranges(experiments: Iterable[Experiment]) -> list[tuple[float, float]]:
    """The (start, end) ranges of the experiment layer no experiment owns."""
    gaps, at = [], 0.0
    for e in sorted(experiments, key=lambda e: e.offset):
        if e.offset > at + _EPS:
            gaps.append((at, e.offset))
        at = max(at, e.end)
    if at < 100 - _EPS:
        gaps.append((at, 100.0))
    return gaps


def allocate(
    experiments: Sequence[Experiment], share: float | None, where: str, error: type[Exception]
) -> tuple[float, float]:
    """(share, offset) for a new experiment: the first free range that fits ``share``, or the
    largest free range when no share is given. ``error`` is raised when nothing fits."""
    gaps = free_ranges(experiments)
    taken = ", ".join(f"'{e.id}' {e.share:g}%" for e in experiments) or "nothing"
    if share is None:
        if not gaps:
            raise error(
                f"{where}.share: no traffic left for another experiment ({taken}); stop one "
                "or give the experiments smaller shares"
            )
        start, end = max(gaps, key=lambda g: g[1] - g[0])
        return end - start, start
    check_percent(share, f"{where}.share")
    for start, end in gaps:
        if end - start >= share - _EPS:
            return float(share), start
    free = max((end - start for start, end in gaps), default=0.0)
    raise error(
        f"{where}.share: {share:g}% does not fit; the largest free range is {free:g}% "
        f"(taken: {taken})"
    )
