"""Config composition: every model x task composes and validates (Hydra compose API, no training)."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import fields
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from lsg.convert import ConversionSettings
from lsg.settings import LSGSettings
from tasks.config import ConversionConfig, LSGConfig, RunConfig, to_run_config

CONF = Path(__file__).resolve().parents[1] / "conf"
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
TASKS = sorted(p.stem for p in (CONF / "task").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
SEQ2SEQ_MODELS = {"bart_base", "lsg_bart", "lsg_bert2bert"}


@pytest.fixture(scope="module")
def hydra_conf():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def make(*overrides: str) -> RunConfig:
    return to_run_config(compose(config_name="config", overrides=list(overrides)))


def test_groups_hold_what_the_issue_lists():
    assert {"truncated", "lsg_local", "lsg_stride", "lsg_block_stride", "lsg_pooling", "lsg_norm", "lsg_lsh",
            "lsg_bos_pooling", "longformer", "bigbird", "legal_bert", "bart_base", "lsg_bart"} <= set(MODELS)
    assert {"mlm", "imdb", "arxiv", "patent", "scotus", "ecthr_a", "ecthr_b", "pubmed", "arxiv_sum", "multinews",
            "mediasum", "bbc_topic", "bbc_longdoc", "aclsum", "bbc_headline", "wiki_mlm"} <= set(TASKS)
    assert {p.stem for p in (CONF / "trainer").glob("*.yaml")} == {"auto", "cpu", "gpu", "multi_gpu"}


def check_pair(model: str, task: str) -> None:
    """Compose model x task; compatible pairs validate, incompatible ones fail at startup naming both."""
    cfg = compose(config_name="config", overrides=[f"model={model}", f"task={task}"])
    if (cfg.task.kind == "seq2seq") != (model in SEQ2SEQ_MODELS):
        with pytest.raises(ValueError, match=f"(task={task}|model={model})"):
            to_run_config(cfg)
        return
    run = to_run_config(cfg)
    assert run.model.name == model and run.task.name == task
    assert run.run_dir == f"runs/{task}/{run.run_name}"
    assert run.model.checkpoint  # interpolations resolved (hub id or local dir)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_composes_with_an_encoder_and_a_seq2seq_task(hydra_conf, model):
    for task in ("bbc_topic", "aclsum"):
        check_pair(model, task)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_composes_with_an_encoder_and_a_seq2seq_model(hydra_conf, task):
    for model in ("lsg_norm", "lsg_bart"):
        check_pair(model, task)


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_every_model_composes_with_every_task(hydra_conf, task):
    for model in MODELS:
        check_pair(model, task)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiments_compose(hydra_conf, experiment):
    run = make(f"experiment={experiment}")
    assert run.experiment_name == experiment
    # Table 2's two sweeps share one folder and W&B group (issue 15)
    group = {"table2_classification": "table2", "table2_legal": "table2"}.get(experiment, experiment)
    assert run.run_dir.startswith(f"runs/{group}/")


TASK_ENCODER = "<task.default_encoder>"
LSG_FIELDS = ("block_size", "sparse_block_size", "sparsity_factor", "sparsity_type", "num_global_tokens")
# The resolved `model` node of every conf/model file, captured from the configs before they inherited from each
# other through `defaults:` (then renamed: roberta_full -> truncated, attention full -> original; issue 15:
# longformer/bigbird became the public checkpoints, the conversions *_from_roberta):
# name: (checkpoint, attention, architecture, max_length, model.lsg's (bs, sbs, f, sparsity_type, G)).
FROZEN_MODELS = {
    "bart_base": ("facebook/bart-base", "original", "bart", 1024, (128, 128, 2, "norm", 1)),
    "bigbird": ("google/bigbird-roberta-base", "original", "encoder", 4096, (128, 128, 2, "norm", 1)),
    "bigbird_from_roberta": (TASK_ENCODER, "bigbird", "encoder", 4096, (128, 128, 2, "norm", 1)),
    "legal_bert": ("nlpaueb/legal-bert-base-uncased", "original", "encoder", 512, (128, 128, 2, "norm", 1)),
    "longformer": ("allenai/longformer-base-4096", "original", "encoder", 4096, (128, 128, 2, "norm", 1)),
    "longformer_from_roberta": (TASK_ENCODER, "longformer", "encoder", 4096, (128, 128, 2, "norm", 1)),
    "lsg_bart": ("facebook/bart-base", "lsg", "bart", 4096, (256, 0, 0, "none", 1)),
    "lsg_bert2bert": (TASK_ENCODER, "lsg", "bert2bert", 4096, (256, 0, 0, "none", 1)),
    "lsg_block_stride": (TASK_ENCODER, "lsg", "encoder", 4096, (128, 128, 4, "block_stride", 1)),
    "lsg_bos_pooling": (TASK_ENCODER, "lsg", "encoder", 4096, (128, 128, 4, "bos_pooling", 1)),
    "lsg_legal_local": ("nlpaueb/legal-bert-base-uncased", "lsg", "encoder", 4096, (256, 128, 0, "none", 1)),
    "lsg_legal_norm": ("nlpaueb/legal-bert-base-uncased", "lsg", "encoder", 4096, (128, 128, 4, "norm", 1)),
    "lsg_local": (TASK_ENCODER, "lsg", "encoder", 4096, (256, 128, 0, "none", 1)),
    "lsg_lsh": (TASK_ENCODER, "lsg", "encoder", 4096, (128, 128, 4, "lsh", 1)),
    "lsg_norm": (TASK_ENCODER, "lsg", "encoder", 4096, (128, 128, 4, "norm", 1)),
    "lsg_pooling": (TASK_ENCODER, "lsg", "encoder", 4096, (128, 128, 4, "pooling", 1)),
    "lsg_stride": (TASK_ENCODER, "lsg", "encoder", 4096, (128, 128, 4, "stride", 1)),
    "truncated": (TASK_ENCODER, "original", "encoder", 512, (128, 128, 2, "norm", 1)),
}


def _model_node(model: str, task: str, resolve: bool = True) -> dict:
    return OmegaConf.to_container(compose(config_name="config", overrides=[f"model={model}", f"task={task}"]).model,
                                  resolve=resolve)


@pytest.mark.parametrize("model", MODELS)
def test_models_compose_to_their_frozen_values(hydra_conf, model):
    """Inheritance changed no value: every model, with an offline and a paper task, gives the captured node."""
    checkpoint, attention, architecture, max_length, lsg_values = FROZEN_MODELS[model]
    for task in ("bbc_longdoc", "imdb"):
        node = _model_node(model, task)
        encoder = compose(config_name="config", overrides=[f"task={task}"]).task.default_encoder
        assert node == {
            "name": model, "checkpoint": encoder if checkpoint == TASK_ENCODER else checkpoint,
            "attention": attention, "architecture": architecture, "max_length": max_length,
            "lsg": {**LSGSettings().to_dict(), **dict(zip(LSG_FIELDS, lsg_values, strict=True))},
            "conversion": dataclasses.asdict(ConversionSettings()), "attention_window": 512,
            "bigbird_block_size": 64, "num_random_blocks": 3, "tokenizer": None,
        }


def _flat(node: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in node.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


@pytest.mark.parametrize("model", [m for m in MODELS if "defaults" in OmegaConf.load(CONF / "model" / f"{m}.yaml")])
def test_a_model_that_inherits_is_its_parent_plus_its_own_lines(hydra_conf, model):
    """`defaults: [parent, _self_]`: the composed node is the parent's, but for the keys the file sets itself."""
    own = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{model}.yaml"))
    (parent, self_) = own.pop("defaults")
    assert self_ == "_self_"
    child_node, parent_node = (_flat(_model_node(name, "imdb", resolve=False)) for name in (model, parent))
    own = _flat(own)
    assert {k: v for k, v in child_node.items() if k not in own} == {k: v for k, v in parent_node.items()
                                                                     if k not in own}
    assert {k: child_node[k] for k in own} == own
    assert any(parent_node[k] != child_node[k] for k in own)


def test_offline_tasks_use_the_real_minilm_and_paper_tasks_the_hub_ids(hydra_conf):
    offline = make("task=bbc_longdoc", "model=lsg_norm")
    assert (Path(offline.model.checkpoint) / "config.json").exists()
    paper = make("task=ecthr_a", "model=lsg_norm")
    assert paper.model.checkpoint == "roberta-base"
    assert paper.task.data.hub_id == "coastalcph/lex_glue" and paper.task.none_label
    assert make("task=ecthr_a", "model=lsg_norm", "model.checkpoint=/my/roberta").model.checkpoint == "/my/roberta"
    assert make("task=pubmed", "model=lsg_bart").model.checkpoint == "facebook/bart-base"


def test_paper_hyper_parameters(hydra_conf):
    for task, epochs, lr in (("imdb", 3, 2e-5), ("arxiv", 3, 5e-5), ("patent", 3, 2e-5), ("scotus", 7, 1e-4),
                             ("ecthr_a", 5, 1e-4), ("ecthr_b", 5, 1e-4)):
        run = make(f"task={task}")
        assert (run.task.epochs, run.task.learning_rate, run.task.batch_size) == (epochs, lr, 32)
    summary = make("task=arxiv_sum", "model=lsg_bart").task
    assert (summary.learning_rate, summary.warmup_ratio, summary.generation.num_beams,
            summary.generation.length_penalty) == (8e-5, 0.1, 5, 2.0)
    lsg_local = make("model=lsg_local").model.lsg
    assert (lsg_local.block_size, lsg_local.sparsity_factor, lsg_local.sparsity_type) == (256, 0, "none")


@pytest.mark.parametrize(("schema", "settings"), [(LSGConfig, LSGSettings), (ConversionConfig, ConversionSettings)])
def test_lsg_and_conversion_nodes_have_the_library_fields(schema, settings):
    """One definition: the Hydra nodes copy the library dataclasses' names, types and defaults."""
    assert [(f.name, f.default) for f in fields(schema)] == [(f.name, f.default) for f in fields(settings)]
    assert typing.get_type_hints(schema) == typing.get_type_hints(settings)


def test_every_lsg_and_conversion_field_is_overridable(hydra_conf):
    run = make("model=lsg_norm", "model.lsg.block_size=64", "model.lsg.mask_first_token=true",
               "model.lsg.pool_with_global=true", "model.lsg.lsh_num_pre_rounds=3", "model.lsg.lsh_seed=5",
               "model.lsg.adaptive=false", "model.lsg.sparsity_type=lsh", "model.conversion.random_global_init=true",
               "model.conversion.global_positional_stride=8", "model.conversion.use_token_ids=false",
               "model.conversion.pass_global_tokens_to_decoder=false", "model.conversion.seed=7")
    assert run.model.lsg_settings() == LSGSettings(
        block_size=64, sparse_block_size=128, sparsity_factor=4, sparsity_type="lsh", num_global_tokens=1,
        mask_first_token=True, pool_with_global=True, lsh_num_pre_rounds=3, lsh_seed=5, adaptive=False)
    assert run.model.conversion_settings() == ConversionSettings(
        random_global_init=True, global_positional_stride=8, use_token_ids=False,
        pass_global_tokens_to_decoder=False, seed=7)
    assert make("model=lsg_local").model.lsg_settings().sparsity_type == "none"


def test_knobs_are_overridable(hydra_conf):
    run = make("model=lsg_norm", "model.lsg.block_size=64", "model.lsg.sparse_block_size=32",
               "model.lsg.sparsity_factor=8", "model.lsg.num_global_tokens=4", "model.max_length=8192")
    assert (run.model.lsg.block_size, run.model.lsg.num_global_tokens, run.model.max_length) == (64, 4, 8192)


@pytest.mark.parametrize(("overrides", "message"), [
    (["trainer=cpu", "trainer.precision=fp16"], r"trainer.precision=fp16 needs trainer.device=cuda"),
    (["trainer.tune=everything"], r"trainer.tune='everything' is not supported; use one of \['all', 'global_tokens'\]"),
    (["model.lsg.sparsity_type=max"], r"model.lsg.sparsity_type='max' is not supported"),
    (["model.lsg.block_size=100", "model.lsg.sparsity_factor=3"], r"sparsity_factor=3 must divide .*block_size=100"),
    (["trainer.per_device_batch_size=5"], r"per_device_batch_size=5 must divide task.batch_size=16"),
    (["task.warmup_ratio=1.5"], r"task.warmup_ratio=1.5 is out of range: it must be in \[0.0, 0.999\]"),
    (["model=truncated", "trainer.tune=global_tokens"], r"tune=global_tokens needs an LSG model"),
    (["task.data.builder=null"], r"task.data needs one of hub_id, path or builder"),
    (["model.lsg.num_global_tokens=513"], r"model.lsg.num_global_tokens=513 is out of range: it must be in \[1, 512\]"),
    (["model.lsg.mask_first_token=true", "model.lsg.pool_with_global=false"],
     r"model.lsg.mask_first_token=True needs pool_with_global=True"),
    (["model.conversion.global_positional_stride=0"], r"model.conversion.global_positional_stride=0 is out of range"),
])
def test_bad_values_fail_at_startup_naming_the_parameter(hydra_conf, overrides, message):
    with pytest.raises(ValueError, match=message):
        make(*overrides)


def test_wrong_types_fail_at_composition(hydra_conf):
    with pytest.raises(Exception, match="model.max_length"):
        make("model.max_length=long")
    with pytest.raises(Exception, match="model.lsg.adaptive"):
        make("model.lsg.adaptive=maybe")


@pytest.mark.parametrize(("group", "name"), [("model", "lsg_nrom"), ("task", "ecthr_c")])
def test_unknown_names_list_the_available_ones(hydra_conf, group, name):
    with pytest.raises(MissingConfigException) as error:
        make(f"{group}={name}")
    assert f"Available options in '{group}'" in str(error.value)
    assert ("lsg_norm" if group == "model" else "ecthr_a") in str(error.value)


def test_resolved_config_round_trips(hydra_conf):
    run = make("task=bbc_longdoc", "model=lsg_norm")
    again = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.structured(run)))
    assert again == run
