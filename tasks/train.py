"""One run, end to end: data -> model -> HF Trainer (on Accelerate) -> metrics.json in the run dir.

Run dir layout (`runs/<experiment or task>/<task>-<model>-L<length>-s<seed>-<run id>/`):
    config.yaml        resolved config (Hydra keeps the unresolved one in .hydra/)
    metrics.json       the result record (tasks/report.py), written atomically, rank 0 only
    train_log.jsonl    one line per logging step: step, epoch, loss, learning_rate, ms/step
    checkpoints/       HF Trainer checkpoints; a killed run resumes from the last complete one (tasks/resume.py)
    incomplete/        checkpoints a kill left half written, moved aside
    final/             the trained model + tokenizer (trainer.save_final), usable as model.checkpoint; atomic
    run.lock           flock held by the running process (tasks/run_identity.py: one run per directory)
    wandb/             W&B files (offline runs sync later with `wandb sync`)
    identity.json      what makes this run different (tasks/run_identity.py); a dir holding another
                       configuration is refused, naming the differing keys

A run whose metrics.json exists is skipped unless `force`, which also deletes the previous outputs.
Under `accelerate launch` every process runs this function; the Trainer shards the batches, and only the
main process writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from accelerate import PartialState
from omegaconf import OmegaConf
from transformers import TrainerCallback, TrainerState, TrainingArguments

from lsg.atomic import staged_directory, write_json
from tasks.config import RunConfig
from tasks.data import load_splits
from tasks.data_checks import check_splits
from tasks.hardware import resolve
from tasks.models import apply_tuning, attention_label, build_model, is_head_parameter, load_tokenizer
from tasks.preflight import check_run
from tasks.registry import TaskKind, load_kind
from tasks.report import build_record, read_record
from tasks.resume import STATE_FILE, TrainClock, finished, resumable_checkpoint, trainer_state, trim_log
from tasks.run_identity import claim_run_dir, hold_run_dir, identity
from tasks.tables import paper_values

log = logging.getLogger(__name__)


class JsonlLog(TrainerCallback):
    """Appends every Trainer log entry to train_log.jsonl, with ms per optimizer step (main process only)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last: tuple[float, int] | None = None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        now = time.perf_counter()
        entry = {"step": state.global_step, "epoch": state.epoch, **logs}
        if self.last is not None and state.global_step > self.last[1]:
            entry["ms_per_step"] = 1000 * (now - self.last[0]) / (state.global_step - self.last[1])
        self.last = (now, state.global_step)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


def input_length(cfg: RunConfig) -> int:
    """Tokens the model reads: the task's max_length capped by the model's (512 for the full baselines)."""
    return min(cfg.task.max_length, cfg.model.max_length)


def _wandb_id(run_dir: Path, forced: bool) -> str:
    return hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16] + (f"-f{int(time.time())}" if forced else "")


def start_wandb(cfg: RunConfig, run_dir: Path, *, attention: str, forced: bool = False) -> bool:
    """Start the W&B run on the main process (project/group/tags from logger.*); False when logging is off.

    The W&B id follows the run dir (so a resumed run appends to its own W&B run); a forced rerun gets a new id.
    `attention` is the attention computed (tasks.models.attention_label), tagged `attention:<name>`.
    """
    mode = cfg.logger.resolved_mode()
    if cfg.logger.name == "none" or mode == "disabled":
        return False
    if not PartialState().is_main_process:
        return True  # the Trainer's W&B callback only logs from the main process
    import wandb

    (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
    # key:value tags keep the attention (lsg) apart from the model name (lsg_local) in W&B filters
    tags = [*cfg.logger.tags, f"table:{cfg.group}", f"task:{cfg.task.name}", f"model:{cfg.model.name}",
            f"attention:{attention}"]
    wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, group=cfg.logger.group, tags=tags,
               name=cfg.run_name, dir=str(run_dir), mode=mode, config=dataclasses.asdict(cfg), resume="allow",
               id=_wandb_id(run_dir, forced))
    return True


def training_arguments(cfg: RunConfig, kind: TaskKind, run_dir: Path, report_to: str) -> TrainingArguments:
    """The kind's TrainingArguments; gradient accumulation = task.batch_size / (per-device batch x processes)."""
    processes = PartialState().num_processes
    per_step = cfg.trainer.per_device_batch_size * processes
    if cfg.task.batch_size % per_step:
        raise ValueError(f"task.batch_size={cfg.task.batch_size} is not a multiple of per-device batch "
                         f"{cfg.trainer.per_device_batch_size} x {processes} processes; change "
                         "trainer.per_device_batch_size or the number of processes")
    trainer = cfg.trainer
    return kind.training_arguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=trainer.per_device_batch_size,
        per_device_eval_batch_size=trainer.eval_batch_size or trainer.per_device_batch_size,
        gradient_accumulation_steps=cfg.task.batch_size // per_step,
        num_train_epochs=cfg.task.epochs,
        max_steps=trainer.max_steps,
        learning_rate=cfg.task.learning_rate,
        lr_scheduler_type="linear",  # paper §4: linear decay
        warmup_steps=cfg.task.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=cfg.task.weight_decay,
        bf16=trainer.precision == "bf16",
        fp16=trainer.precision == "fp16",
        use_cpu=trainer.device == "cpu",
        gradient_checkpointing=trainer.gradient_checkpointing,
        logging_steps=trainer.logging_steps,
        eval_strategy="no",
        save_strategy="steps",
        save_steps=trainer.save_steps,
        save_total_limit=trainer.save_total_limit,
        seed=trainer.seed,
        data_seed=trainer.seed,
        report_to=report_to,
        run_name=cfg.run_name,
        dataloader_num_workers=trainer.dataloader_workers,
        disable_tqdm=False,
    )


def optimizer_for(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer | None:
    """AdamW with task.head_learning_rate on the head and global tokens; None = the Trainer's default."""
    if cfg.task.head_learning_rate is None:
        return None
    groups: dict[bool, list[torch.nn.Parameter]] = {True: [], False: []}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups[is_head_parameter(model, name) or "global_embeddings" in name].append(parameter)
    return torch.optim.AdamW(
        [{"params": groups[False]}, {"params": groups[True], "lr": cfg.task.head_learning_rate}],
        lr=cfg.task.learning_rate, weight_decay=cfg.task.weight_decay,
    )


def _tokens(dataset: Any) -> int:
    return sum(len(ids) for ids in dataset["input_ids"])


def distinguishing_settings(cfg: RunConfig) -> dict[str, Any]:
    """The knobs that make two runs of one model on one task different experiments (not seeds of one)."""
    model, trainer = cfg.model, cfg.trainer
    settings: dict[str, Any] = {"attention": model.attention, "max_length": model.max_length, "tune": trainer.tune,
                                "do_train": trainer.do_train, "freeze_layers": trainer.freeze_layers,
                                "max_steps": trainer.max_steps, "precision": trainer.precision,
                                "epochs": cfg.task.epochs, "learning_rate": cfg.task.learning_rate}
    if model.attention == "lsg":
        settings.update({key: getattr(model.lsg, key) for key in ("block_size", "sparse_block_size",
                                                                  "sparsity_factor", "sparsity_type",
                                                                  "num_global_tokens")})
    elif model.attention == "longformer":
        settings["attention_window"] = model.attention_window
    elif model.attention == "bigbird":
        settings.update(bigbird_block_size=model.bigbird_block_size, num_random_blocks=model.num_random_blocks)
    return settings


def with_hardware(cfg: RunConfig) -> RunConfig:
    """`cfg` with `trainer.device`/`trainer.precision` resolved (tasks/hardware.py): what config.yaml and
    metrics.json record is what ran, not "auto"."""
    device, precision = resolve(cfg.trainer.device, cfg.trainer.precision)
    log.info("device=%s (asked: %s), precision=%s (asked: %s)", device, cfg.trainer.device, precision,
             cfg.trainer.precision)
    return dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, device=device, precision=precision))


def run(cfg: RunConfig, *, force: bool = False, callbacks: Sequence[TrainerCallback] = ()) -> dict[str, Any]:
    """Train and evaluate one configuration; returns its metrics.json record (read back if skipped).

    The main process holds the run directory's lock (`hold_run_dir`) from before it touches the directory
    until the record is written: a second run of the same directory stops at once (`RunDirInUseError`).
    """
    started = time.perf_counter()
    check_run(cfg)  # every check that needs no weights: config, checkpoint config, local data files
    current = identity(cfg)  # before the hardware is resolved: trainer.precision=auto is what was asked
    cfg = with_hardware(cfg)
    # Created first, with the device: a bare PartialState() on a machine without CUDA stays single-process
    # (DistributedType.NO) even under `accelerate launch`, and every rank would believe it is the main one.
    state = PartialState(cpu=cfg.trainer.device == "cpu")
    with hold_run_dir(Path(cfg.run_dir)) if state.is_main_process else contextlib.nullcontext():
        return _run_held(cfg, state, current, started, force=force, callbacks=callbacks)


def _run_held(cfg: RunConfig, state: PartialState, current: dict[str, Any], started: float, *, force: bool,
              callbacks: Sequence[TrainerCallback]) -> dict[str, Any]:
    """`run` once the run directory is this process's."""
    run_dir = Path(cfg.run_dir)
    metrics_path = run_dir / "metrics.json"
    if state.is_main_process:
        claim_run_dir(run_dir, current, force=force)  # raises when the dir holds another configuration
    state.wait_for_everyone()
    done = None if force else read_record(metrics_path)
    if done is not None:
        log.info("skipping %s: metrics.json exists (+force=true reruns it)", run_dir)
        return done
    transformers.set_seed(cfg.trainer.seed)
    length = input_length(cfg)
    kind = load_kind(cfg.task.kind)

    with state.main_process_first():  # builders and tokenization once, not concurrently
        splits = load_splits(cfg.task.data)
        check_splits(splits, cfg.task)  # every split's labels, before any training (builders and hub data too)
        tokenizer = load_tokenizer(cfg.model, length)
        encoded = kind.encode(splits, tokenizer, cfg.task, length)
        # the main process first: it alone moves an incomplete checkpoint aside, the others then agree with it
        last = resumable_checkpoint(run_dir / "checkpoints", run_dir) if cfg.trainer.do_train else None
    head = kind.head_kwargs(splits, cfg.task)
    model = build_model(cfg.model, kind.head, tokenizer, **head)
    # Our heads return a mean loss and ignore `num_items_in_batch`. Left to its heuristic (a forward with
    # **kwargs), the Trainer assumes they sum over items, skips dividing by the accumulation steps and multiplies
    # by the process count: the logged loss and the gradients (hence clipping) came out that many times too large.
    model.accepts_loss_kwargs = False
    kind.prepare_model(model, tokenizer, cfg.task)
    counts = apply_tuning(model, cfg.trainer)
    if state.is_main_process:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)), encoding="utf-8")

    saved = trainer_state(last) if last else None
    clock = TrainClock.resumed_from(saved)
    logging_to_wandb = start_wandb(cfg, run_dir, attention=attention_label(cfg.model, model), forced=force)
    report_to = "wandb" if logging_to_wandb else "none"
    trainer = kind.trainer_class(
        model=model,
        args=training_arguments(cfg, kind, run_dir, report_to),
        train_dataset=encoded["train"],
        data_collator=kind.collator(tokenizer, cfg.task, model),
        processing_class=tokenizer,
        compute_metrics=kind.compute_metrics(cfg.task, tokenizer, splits[cfg.trainer.eval_split]),
        preprocess_logits_for_metrics=kind.preprocess_logits(),
        callbacks=[JsonlLog(run_dir / "train_log.jsonl"), clock, *callbacks],
        optimizers=(optimizer_for(model, cfg), None),  # the scheduler (linear decay) is the Trainer's
    )
    train_seconds = 0.0
    if cfg.trainer.do_train:
        if saved is not None and finished(saved):
            # Killed after the last step (writing final/ or evaluating): the checkpoint is the trained model.
            # Resuming the Trainer from it would train one step past the budget and report the wrong epoch.
            log.info("%s holds all %d steps: not training again", last, saved["global_step"])
            trainer._load_from_checkpoint(str(last))
            trainer.state = TrainerState.load_from_json(str(last / STATE_FILE))
        else:
            if last is not None:
                log.info("resuming from %s (%.0f s of training so far)", last, clock.offset)
                if state.is_main_process:
                    trim_log(run_dir / "train_log.jsonl", saved["global_step"])
            trainer.train(resume_from_checkpoint=str(last) if last else None)
        train_seconds = clock.seconds
        if cfg.trainer.save_final and state.is_main_process:  # model + tokenizer: a model.checkpoint for later runs
            with staged_directory(run_dir / "final") as staging:  # a kill never leaves half a final/
                trainer.save_model(str(staging))
    state.wait_for_everyone()
    split = cfg.trainer.eval_split
    tick = time.perf_counter()
    scores = trainer.evaluate(encoded[split], metric_key_prefix=split)
    eval_seconds = time.perf_counter() - tick
    metrics = {key.removeprefix(f"{split}_"): value for key, value in scores.items()
               if not key.endswith(("_runtime", "_samples_per_second", "_steps_per_second", "_model_preparation_time"))}
    record = build_record(
        experiment=cfg.experiment_name, task=cfg.task.name, model=cfg.model.name, attention=cfg.model.attention,
        checkpoint=cfg.model.checkpoint, max_length=length, seed=cfg.trainer.seed, split=split, metrics=metrics,
        n_samples=len(encoded[split]), train_seconds=train_seconds, eval_seconds=eval_seconds,
        wall_seconds=time.perf_counter() - started, **counts, run_dir=str(run_dir), device=cfg.trainer.device,
        train_tokens=_tokens(encoded["train"]) * (trainer.state.epoch or 0.0), eval_tokens=_tokens(encoded[split]),
        processes=state.num_processes, run_id=cfg.run_id,
        # the label count and kind too: plots draw a chance line only where it means something
        settings={**distinguishing_settings(cfg), "num_labels": head.get("num_labels"),
                  "multi_label": head.get("problem_type") == "multi_label_classification"},
    )
    if state.is_main_process:
        write_json(metrics_path, record)
        if report_to == "wandb":
            import wandb

            wandb.run.summary.update({f"{split}/{k}": v for k, v in metrics.items()})
            # the paper's value beside ours, so a panel can draw both (tasks/paper/<table>.yaml)
            wandb.run.summary.update({f"paper/{k}": v for k, v in
                                      paper_values(cfg.group, cfg.model.name, cfg.task.name).items()})
            wandb.finish()
    state.wait_for_everyone()
    return record
