"""Config composition: every model x task composes and validates (Hydra compose API, no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from tasks.config import RunConfig, to_run_config

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
    assert {"roberta_full", "lsg_local", "lsg_stride", "lsg_block_stride", "lsg_pooling", "lsg_norm", "lsg_lsh",
            "lsg_bos_pooling", "longformer", "bigbird", "legal_bert", "bart_base", "lsg_bart"} <= set(MODELS)
    assert {"mlm", "imdb", "arxiv", "patent", "scotus", "ecthr_a", "ecthr_b", "pubmed", "arxiv_sum", "multinews",
            "mediasum", "bbc_topic", "bbc_longdoc", "aclsum", "bbc_headline", "wiki_mlm"} <= set(TASKS)
    assert {p.stem for p in (CONF / "trainer").glob("*.yaml")} == {"cpu", "gpu", "multi_gpu"}


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
    assert run.run_dir.startswith(f"runs/{experiment}/")


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


def test_knobs_are_overridable(hydra_conf):
    run = make("model=lsg_norm", "model.lsg.block_size=64", "model.lsg.sparse_block_size=32",
               "model.lsg.sparsity_factor=8", "model.lsg.num_global_tokens=4", "model.max_length=8192")
    assert (run.model.lsg.block_size, run.model.lsg.num_global_tokens, run.model.max_length) == (64, 4, 8192)


@pytest.mark.parametrize(("overrides", "message"), [
    (["trainer.precision=fp16"], r"trainer.precision=fp16 needs trainer.device=cuda"),
    (["trainer.tune=everything"], r"trainer.tune='everything' is not supported; use one of \['all', 'global_tokens'\]"),
    (["model.lsg.sparsity_type=max"], r"model.lsg.sparsity_type='max' is not supported"),
    (["model.lsg.block_size=100", "model.lsg.sparsity_factor=3"], r"sparsity_factor=3 must divide .*block_size=100"),
    (["trainer.per_device_batch_size=5"], r"per_device_batch_size=5 must divide task.batch_size=16"),
    (["task.warmup_ratio=1.5"], r"task.warmup_ratio=1.5 is out of range: it must be in \[0.0, 0.999\]"),
    (["model=roberta_full", "trainer.tune=global_tokens"], r"tune=global_tokens needs an LSG model"),
    (["task.data.builder=null"], r"task.data needs one of hub_id, path or builder"),
])
def test_bad_values_fail_at_startup_naming_the_parameter(hydra_conf, overrides, message):
    with pytest.raises(ValueError, match=message):
        make(*overrides)


def test_wrong_types_fail_at_composition(hydra_conf):
    with pytest.raises(Exception, match="model.max_length"):
        make("model.max_length=long")


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
