"""A lesson's grid: datasets, conditions, variants and seeds, and the cells they multiply into.

A cell is one training run: (condition, variant, seed). Its config is the lesson's base settings, then the
condition's overrides, then the variant's, then the seed, each a dotted `key=value` checked like `--set`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from gptlab.config import RunConfig, apply_overrides


def as_overrides(values: Mapping[str, Any]) -> list[str]:
    """{"model.n_layer": 4} -> ["model.n_layer=4"], the form `apply_overrides` parses and checks."""
    return [f"{k}={v}" for k, v in values.items()]


@dataclass(frozen=True)
class Dataset:
    """A corpus tokenized one way; prepared once per lesson directory and shared by its cells."""
    corpus: str
    tokenizer: str = "char"
    vocab_size: int | None = None

    @property
    def key(self) -> str:
        name = self.corpus.replace("/", "_")
        return f"{name}-{self.tokenizer}{self.vocab_size or ''}"


@dataclass(frozen=True)
class Condition:
    """A setting the comparison is repeated under (vocabulary, model size, token budget ...)."""
    name: str
    dataset: Dataset
    overrides: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""


@dataclass(frozen=True)
class Variant:
    """One arm of the comparison: a set of config overrides."""
    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""


@dataclass(frozen=True)
class Grid:
    """A profile of a lesson: what runs, how long, with how many seeds."""
    conditions: tuple[Condition, ...]
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    base: Mapping[str, Any] = field(default_factory=dict)  # budget and shared settings
    exclude: tuple[tuple[str, str], ...] = ()  # (condition, variant) pairs that do not apply
    # The lesson's own settings for this profile that are not a cell's config (a base model's recipe, the
    # evaluation windows ...): every cell of the grid carries them.
    settings: Mapping[str, Any] = field(default_factory=dict)

    def with_seeds(self, n: int) -> "Grid":
        return dataclasses.replace(self, seeds=tuple(range(n)))

    def applies(self, condition: Condition, variant: Variant) -> bool:
        return (condition.name, variant.name) not in self.exclude

    @property
    def size(self) -> int:
        pairs = sum(self.applies(c, v) for c in self.conditions for v in self.variants)
        return pairs * len(self.seeds)

    def describe(self) -> dict[str, Any]:
        return {
            "conditions": [{"name": c.name, "label": c.label, "dataset": c.dataset.key, "overrides": dict(c.overrides)}
                           for c in self.conditions],
            "variants": [{"name": v.name, "label": v.label, "overrides": dict(v.overrides)} for v in self.variants],
            "seeds": list(self.seeds),
            "base": dict(self.base),
            "exclude": [list(pair) for pair in self.exclude],
            "settings": dict(self.settings),
        }


def cell_path(root: str | Path, condition: str, variant: str, seed: int) -> Path:
    """Where a cell lives in a lesson's directory: ROOT/cells/CONDITION/VARIANT/seedN."""
    return Path(root) / "cells" / condition / variant / f"seed{seed}"


@dataclass(frozen=True)
class Cell:
    condition: Condition
    variant: Variant
    seed: int
    config: RunConfig
    settings: Mapping[str, Any] = field(default_factory=dict)  # the grid's lesson settings

    @property
    def name(self) -> str:
        return f"{self.condition.name}/{self.variant.name}/seed{self.seed}"

    def directory(self, root: str | Path) -> Path:
        return cell_path(root, self.condition.name, self.variant.name, self.seed)

    def identity(self) -> dict[str, Any]:
        return {"condition": self.condition.name, "variant": self.variant.name, "seed": self.seed,
                "dataset": self.condition.dataset.key}


def cell_config(grid: Grid, condition: Condition, variant: Variant, seed: int, extra: list[str] | None = None,
                vocab_size: int | None = None) -> RunConfig:
    """Base ← condition ← variant ← seed ← the user's `--set` extras; vocab_size from the prepared data."""
    overrides = as_overrides(grid.base) + as_overrides(condition.overrides) + as_overrides(variant.overrides)
    overrides += [f"train.seed={seed}"] + list(extra or [])
    if vocab_size is not None:
        overrides.append(f"model.vocab_size={vocab_size}")
    return apply_overrides(RunConfig(), overrides)
