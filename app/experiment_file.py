"""Experiment files: one TOML (`--config FILE.toml`) maps onto the typed configs.

`queryrec train`, `queryrec bench` and `queryrec diffusion train` take what a user tunes
as flags and everything else from such a file; a flag wins over the file, the file over
the configs' defaults. Tables and their keys (each key is the field of the same name):

    [train]        TrainConfig (learning_rate, next_weight = lambda_2, cl_weight = lambda_3,
                   temperature = beta of L_cl, embedding_updates, sparse_decay, ...;
                   not model, seed, aux, model_overrides: flags and the tables below)
    [aux]          AuxiliaryConfig (cl_positive_source, next_negative_source, ...)
    [model]        ModelConfig of the neural models (dim, mlp, ...; not vocab), with a
                   baseline's loss weights and sizes in [model.ple], [model.sesrec],
                   [model.iv4rec], [model.unisar]
    [lightgbm]     GBDTParams of the LightGBM rows
    [diffusion]    DiffusionTrainConfig (`diffusion train`, and bench's diffusion job),
                   with [diffusion.schedule] ScheduleConfig
    [bench]        models (list of names), seeds, diffusion_autoencoder (bench only)
    [models.NAME]  per model (bench, or train of that model): [train] keys, and the
                   sub-tables aux, model, lightgbm; they win over the tables above

An unknown table or key, or a value of the wrong type or out of range, is a one-line
`QueryRecError` naming the file and the key (the CLI prints it and exits 2).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from queryrec.diffusion.train import DiffusionTrainConfig
from queryrec.errors import QueryRecError
from queryrec.models.config import ModelConfig
from queryrec.models.registry import model_spec
from queryrec.training.batches import AuxiliaryConfig
from queryrec.training.config import TrainConfig
from queryrec.training.gbdt import GBDTParams

# TrainConfig fields a file does not set: the flags (--model, --seed) and the sub-tables.
NOT_IN_TRAIN_TABLE = frozenset({"model", "seed", "aux", "model_overrides"})
BENCH_KEYS: dict[str, type] = {"models": list, "seeds": int, "diffusion_autoencoder": bool}
PER_MODEL_TABLES = ("aux", "model", "lightgbm")
TOP_TABLES = ("train", "aux", "model", "lightgbm", "diffusion", "bench", "models")


@dataclass(frozen=True)
class ModelSection:
    """The settings of one model name: TrainConfig fields and the sub-tables."""

    train: dict[str, Any] = field(default_factory=dict)
    aux: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    lightgbm: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """An experiment file, checked against the configs (`load_experiment`); the empty
    experiment (no file) gives the configs' defaults."""

    path: Path | None = None
    common: ModelSection = field(default_factory=ModelSection)
    diffusion: dict[str, Any] = field(default_factory=dict)
    bench: dict[str, Any] = field(default_factory=dict)
    models: dict[str, ModelSection] = field(default_factory=dict)

    def train_config(self, model: str, seed: int = 0, **flags: Any) -> TrainConfig:
        """The TrainConfig of one run: the flags that are not None win over the file's
        [models.MODEL] table, which wins over its common tables."""
        own = self.models.get(model, ModelSection())
        values = {**self.common.train, **own.train}
        values.update({k: v for k, v in flags.items() if v is not None})
        lightgbm = model_spec(model).architecture == "lightgbm"

        def build() -> TrainConfig:
            if lightgbm:
                overrides = {**self.common.lightgbm, **own.lightgbm}
            else:
                overrides = _merge_settings(ModelConfig, self.common.model, own.model)
            return TrainConfig(
                model=model,
                seed=seed,
                aux=_instantiate(AuxiliaryConfig, {**self.common.aux, **own.aux}),
                model_overrides=overrides,
                **values,
            )

        return self._build(f"[models.{model}]" if model in self.models else "[train]", build)

    def diffusion_config(self, **flags: Any) -> DiffusionTrainConfig:
        """The DiffusionTrainConfig: the [diffusion] table, the flags that are not None
        winning."""
        values = _merge_settings(DiffusionTrainConfig, self.diffusion, {})
        values.update({k: v for k, v in flags.items() if v is not None})
        return self._build("[diffusion]", lambda: DiffusionTrainConfig(**values))

    def _build(self, where: str, make: typing.Callable[[], Any]) -> Any:
        try:
            return make()
        except (QueryRecError, ValueError) as error:
            source = f"{self.path}: {where} " if self.path is not None else ""
            raise QueryRecError(f"{source}{error}") from None


def load_experiment(path: Path | None) -> Experiment:
    """Read and check an experiment file (None: the empty experiment)."""
    if path is None:
        return Experiment()
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as error:
        raise QueryRecError(f"{path}: cannot read the experiment file ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise QueryRecError(f"{path}: not valid TOML ({error})") from None
    except UnicodeDecodeError:
        raise QueryRecError(f"{path}: not valid TOML (not UTF-8)") from None
    file = _File(Path(path))
    file.check_keys(raw, TOP_TABLES, "table ")
    common = file.section(raw, "")
    diffusion = file.table(raw, "diffusion", DiffusionTrainConfig, "[diffusion]")
    file.validate(DiffusionTrainConfig, diffusion, "[diffusion]")
    bench = file.bench(raw.get("bench", {}))
    models: dict[str, ModelSection] = {}
    per_model = raw.get("models", {})
    if not isinstance(per_model, dict):
        raise file.error("[models]", "expected a table of model names")
    for name, table in per_model.items():
        file.model_name(name, f"[models.{name}]")
        if not isinstance(table, dict):
            raise file.error(f"[models.{name}]", "expected a table")
        models[name] = file.section(table, f"models.{name}.")
    experiment = Experiment(Path(path), common, diffusion, bench, models)
    for name in {*bench.get("models", ()), *models}:
        experiment.train_config(name)  # every run's config is valid before any trains
    return experiment


class _File:
    """Checks of one file's tables; every error names the file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def error(self, where: str, message: str) -> QueryRecError:
        return QueryRecError(f"{self.path}: {where} {message}")

    def check_keys(self, table: dict[str, Any], known: typing.Iterable[str], where: str) -> None:
        known = tuple(known)
        for key in table:
            if key not in known:
                raise self.error(f"{where}{key}:", f"unknown key (known: {', '.join(known)})")

    def section(self, raw: dict[str, Any], prefix: str) -> ModelSection:
        """[train]/[aux]/[model]/[lightgbm] at the top (prefix "") or in [models.NAME]
        (whose own keys are the [train] keys)."""
        if prefix:
            train_keys = [f for f in _fields(TrainConfig) if f not in NOT_IN_TRAIN_TABLE]
            self.check_keys(raw, (*train_keys, *PER_MODEL_TABLES), f"[{prefix.rstrip('.')}] ")
            train_raw = {k: v for k, v in raw.items() if k not in PER_MODEL_TABLES}
            train = self.values(TrainConfig, train_raw, f"[{prefix.rstrip('.')}]")
        else:
            train = self.table(raw, "train", TrainConfig, "[train]")
        aux = self.table(raw, "aux", AuxiliaryConfig, f"[{prefix}aux]")
        model = self.table(raw, "model", ModelConfig, f"[{prefix}model]")
        lightgbm = self.table(raw, "lightgbm", GBDTParams, f"[{prefix}lightgbm]")
        self.validate(TrainConfig, train, f"[{prefix}train]" if not prefix else f"[{prefix}]")
        self.validate(AuxiliaryConfig, aux, f"[{prefix}aux]")
        self.validate(ModelConfig, model, f"[{prefix}model]")
        self.validate(GBDTParams, lightgbm, f"[{prefix}lightgbm]")
        return ModelSection(train, aux, model, lightgbm)

    def table(self, raw: dict[str, Any], name: str, cls: type, where: str) -> dict[str, Any]:
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise self.error(where, "expected a table")
        return self.values(cls, table, where)

    def values(self, cls: type, table: dict[str, Any], where: str) -> dict[str, Any]:
        """The table's values converted to the field types of `cls` (nested settings
        stay dicts of converted values)."""
        hints = typing.get_type_hints(cls)
        settable = [
            f
            for f in _fields(cls)
            if f != "vocab" and not (cls is TrainConfig and f in NOT_IN_TRAIN_TABLE)
        ]
        out: dict[str, Any] = {}
        for key, value in table.items():
            if key not in settable:
                raise self.error(
                    f"{where} {key}:", f"unknown key (known: {', '.join(sorted(settable))})"
                )
            hint = hints[key]
            if dataclasses.is_dataclass(hint):  # a nested table: [model.ple], ...
                if not isinstance(value, dict):
                    raise self.error(f"{where} {key}:", f"expected a table, got {value!r}")
                out[key] = self.values(typing.cast(type, hint), value, f"{where[:-1]}.{key}]")
            else:
                out[key] = self.convert(value, hint, f"{where} {key}:")
        return out

    def convert(self, value: Any, hint: Any, where: str) -> Any:
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            hint = next(a for a in args if a is not type(None))
            return self.convert(value, hint, where)
        if origin is tuple:
            if not isinstance(value, list):
                raise self.error(where, f"expected a list, got {value!r}")
            return tuple(self.convert(v, args[0], where) for v in value)
        if hint is bool:
            if not isinstance(value, bool):
                raise self.error(where, f"expected true or false, got {value!r}")
            return value
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.error(where, f"expected an integer, got {value!r}")
            return value
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.error(where, f"expected a number, got {value!r}")
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                raise self.error(where, f"expected a string, got {value!r}")
            return value
        raise self.error(where, "cannot be set from a file")

    def validate(self, cls: type, values: dict[str, Any], where: str) -> None:
        """The config built from these values alone passes its own checks (ModelConfig:
        each nested settings table, as its vocabulary comes from the dataset)."""
        try:
            if cls is ModelConfig:
                _merge_settings(ModelConfig, values, {})
            else:
                _instantiate(cls, values)
        except (QueryRecError, ValueError, TypeError) as error:
            raise self.error(where, str(error)) from None

    def bench(self, table: Any) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise self.error("[bench]", "expected a table")
        for key, value in table.items():
            if key not in BENCH_KEYS:
                raise self.error(f"[bench] {key}:", f"unknown key (known: {', '.join(BENCH_KEYS)})")
            kind = BENCH_KEYS[key]
            if kind is int:
                self.convert(value, int, f"[bench] {key}:")
            elif kind is bool:
                self.convert(value, bool, f"[bench] {key}:")
            elif not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise self.error(f"[bench] {key}:", f"expected a list of names, got {value!r}")
        for name in table.get("models", ()):
            self.model_name(name, "[bench] models:")
        if table.get("seeds", 1) < 1:
            raise self.error("[bench] seeds:", f"must be >= 1, not {table['seeds']}")
        return dict(table)

    def model_name(self, name: str, where: str) -> None:
        try:
            model_spec(name)
        except QueryRecError as error:
            raise self.error(where, str(error)) from None


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _instantiate(cls: type, values: dict[str, Any]) -> Any:
    """`cls(**values)` with nested dataclass fields built from their dicts."""
    hints = typing.get_type_hints(cls)
    built = {
        k: _instantiate(hints[k], v)
        if isinstance(v, dict) and dataclasses.is_dataclass(hints[k])
        else v
        for k, v in values.items()
    }
    return cls(**built)


def _merge_settings(cls: type, common: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """Field values of `cls`, `own` over `common`; nested settings merged key by key and
    built (a baseline's PLEConfig, DiffusionTrainConfig's ScheduleConfig)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for key in {*common, *own}:
        if dataclasses.is_dataclass(hints[key]):
            out[key] = _instantiate(hints[key], {**common.get(key, {}), **own.get(key, {})})
        else:
            out[key] = own.get(key, common.get(key))
    return out
