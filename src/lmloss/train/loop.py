"""The training loop: AdamW, a schedule, gradient accumulation with the global normalizer.

One optimizer step takes ``grad_accum`` micro-batches. Their sizes are known before any
backward pass (online modes generate first), so the normalizer of the whole step is too:

* token-mean objectives get ``num_items`` = the step's trained tokens, and the
  micro-batch losses are summed (each already divided by the global count);
* objectives that average over examples get their micro-batch loss weighted by
  ``examples_in_micro_batch / examples_in_step``.

Either way the summed gradient equals the gradient of one big batch. The count comes
from :meth:`Trainer.global_count`, which sums it over data-parallel ranks; under torchrun
each rank trains its slice of every global micro-batch and the gradients are summed over
ranks before clipping (see :mod:`lmloss.train.distributed`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from lmloss.train import (
    checkpoint,
    health,
    loggers,
    lr_schedule,
    model_loading,
    rundir,
    signals,
    validate,
)
from lmloss.train.config import Recipe
from lmloss.train.data import Encoder, Sampler, encode_rows
from lmloss.train.device import resolve as resolve_compute
from lmloss.train.device import to_device
from lmloss.train.distributed import (
    World,
    full_optimizer_state,
    full_tensors,
    unwrapped,
    wrap_backbone,
)
from lmloss.train.evaluate import evaluate_task
from lmloss.train.export import export_run_model
from lmloss.train.heldout import SAMPLES, HeldOut, append_samples
from lmloss.train.modes import TOKENS, Batch, Context, mode_of
from lmloss.train.nonfinite import Guard, finite, first_problem
from lmloss.train.packing import pack
from lmloss.train.progress import EVALS, METRICS, Reporter, read_jsonl, truncate_after
from lmloss.train.reference_model import ModelReference
from lmloss.train.token_store import TokenStore


@dataclass
class Summary:
    run_dir: Path
    steps: int
    seconds: float  # the run: training, evaluation and export (not loading)
    losses: list[float] = field(default_factory=list)
    load_seconds: float = 0.0  # models, data and checks, before the first step
    export_seconds: float = 0.0  # the final model (and the plot), after the last step
    before: dict | None = None
    after: dict | None = None
    health: health.Health | None = None  # rank 0: whether the run went wrong (lmloss.train.health)

    def metrics(self, when: str) -> dict:
        """The held-out metrics measured ``"before"`` or ``"after"`` training ({}: none)."""
        return (getattr(self, when) or {}).get("metrics", {})


def _scalar(value) -> float:
    return float(value.detach().float().mean()) if isinstance(value, torch.Tensor) else float(value)


def _silent(*_args, **_kwargs) -> None:
    """The echo of data-parallel ranks other than 0."""


class Trainer:
    """Builds everything a recipe describes; :meth:`run` trains (and evaluates) it.

    The trainer owns its run directory (:mod:`lmloss.train.rundir`): a used one is refused
    unless ``resume`` or ``overwrite``, and a lock keeps other processes out until
    :meth:`close`. ``owner = False`` (``lmloss precompute``) only reads the set-up: no
    check, no lock, no ``recipe.json``."""

    def __init__(
        self,
        recipe: Recipe,
        *,
        resume: bool = False,
        overwrite: bool = False,
        owner: bool = True,
        echo=print,
    ) -> None:
        train = recipe.train
        # device, precision and threads first: a device this machine lacks fails here,
        # before the process group and before any model loads
        self.compute = resolve_compute(train.device, train.precision, train.threads)
        self.device = self.compute.device
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.world = World.join(train.dist_timeout)
        self.recipe = recipe
        self.echo = echo if self.world.is_main else _silent
        self.world.per_rank(train.batch_size)  # a bad split fails before anything loads
        if train.parallel == "fsdp2" and recipe.lora.enabled:
            raise ValueError("train.parallel = 'fsdp2' does not support lora.enabled = true yet")
        self.run_dir = Path(recipe.output.dir)
        self.owner = owner
        self.lock = self._own_run_dir(resume, overwrite) if owner else rundir.RunLock(self.run_dir)
        try:
            self._build(resume)
        except BaseException:
            self.abandon()
            raise

    def _own_run_dir(self, resume: bool, overwrite: bool) -> rundir.Claim | rundir.RunLock:
        """Rank 0 locks, then checks the run directory; every rank learns whether it could."""
        lock, error = rundir.RunLock(self.run_dir), None
        if self.world.is_main:
            try:
                lock = rundir.take(self.run_dir, resume=resume, overwrite=overwrite, echo=self.echo)
            except (ValueError, OSError) as failure:
                error = failure
        if self.world.sum(int(error is not None)):
            raise error or ValueError(f"rank 0 could not take the run directory {self.run_dir}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return lock

    def _build(self, resume: bool) -> None:
        recipe, train = self.recipe, self.recipe.train
        torch.set_num_threads(self.compute.threads)
        self.echo(f"compute: {self.compute.describe()}")
        torch.manual_seed(train.seed)
        random.seed(train.seed)
        self.guard = Guard(train.on_nonfinite, train.max_skips)
        self.autocast = self.compute.autocast
        # every weight-free check (data rows, rewards, resume target, names) before loading
        self.checked = validate.check(recipe, resume=resume, run_dir=self.run_dir, writes=True)
        self.report_to = loggers.backends(recipe.output)

        mode = mode_of(recipe)
        weights = mode.load_weights(recipe.model, self.device)
        self.loaded = model_loading.load(recipe.model, recipe.lora, weights, kind=mode.model_kind)
        self.model = self.loaded.model
        self.world.broadcast_parameters(list(self.model.parameters()))  # identical replicas
        self.model.train()
        tokenizer = self.loaded.tokenizer
        self.encoder = Encoder(tokenizer, recipe.data)
        entry = recipe.entry
        self.ctx = Context(recipe, entry, self.model, tokenizer, self.encoder, self.autocast)
        self.ctx.world = self.world
        self.ctx.echo = self.echo
        self._attach_teacher()
        self.mode = mode(self.ctx)
        self._attach_reference()
        self.rollouts = self.mode.rollout_buffer(train.grad_accum)
        self.sharded = train.parallel == "fsdp2" and self.world.active
        if self.sharded:  # after the reference copy: that one stays whole
            self.world.shard_blocks(list(model_loading.blocks_of(self.model)))
        self.examples = self._examples()
        self.heldout = None
        if self.checked.eval_table is not None:
            if self.world.active:
                raise ValueError("data.eval_path is not supported under torchrun yet")
            self.heldout = HeldOut(
                self.mode, self.checked.eval_table.rows, train.batch_size, self.device
            )
        self._steps_from_epochs()
        train = self.recipe.train
        self.sampler = Sampler(len(self.examples), train.seed, recipe.data.shuffle)
        self.ctx.draw = lambda n: [self.examples[i] for i in self.sampler.take(n)]

        self.trainable = self.loaded.trainable()  # named before any wrapper renames them
        if not self.trainable:
            raise ValueError("nothing to train: every parameter is frozen (see [model] / [lora])")
        self.replicated = None  # the backbone's DistributedDataParallel (GPU, ddp)
        if self.world.active and not self.sharded and self.device.type == "cuda":
            self.replicated = wrap_backbone(self.model, self.device)
        # what the reducer of the wrapper does not sum (an untied head): summed after backward
        in_wrapper = (
            set() if self.replicated is None else set(map(id, self.replicated.parameters()))
        )
        self.summed_after = [p for p in self.trainable.values() if id(p) not in in_wrapper]
        self.optimizer = torch.optim.AdamW(
            list(self.trainable.values()),
            lr=train.lr,
            betas=tuple(train.betas),
            eps=train.adam_eps,
            weight_decay=train.weight_decay,
        )
        self.scheduler = lr_schedule.build(self.optimizer, train)
        self.step = 0
        self.resumed = False
        if resume:
            self._resume()
        if self.world.is_main and self.owner:
            self._save_recipe()

    # ---- set-up

    def _attach_teacher(self) -> None:
        distill = self.recipe.distill
        if distill.teacher is not None:
            teacher, _ = model_loading.load_pretrained(
                distill.teacher,
                self.recipe.model.dtype,
                self.recipe.model.trust_remote_code,
                device=self.device,
                where="distill.teacher",
            )
            teacher.requires_grad_(False)
            self.ctx.teacher = ModelReference(teacher.eval())
        if distill.topk_file is not None:
            from lmloss.train.modes.distill import STORE_KIND

            self.ctx.teacher_store = TokenStore.read(Path(distill.topk_file), STORE_KIND)

    def _attach_reference(self) -> None:
        """The reference the objective needs, made from the model before any step."""
        kind = self.recipe.reference.kind
        if kind == "auto":
            if not self.mode.uses_reference():
                kind = "none"
            else:
                kind = "adapters_off" if self.loaded.peft is not None else "copy"
        if kind == "copy":
            self.ctx.reference = ModelReference.frozen_copy(self.model)
        elif kind == "adapters_off":
            self.ctx.reference = ModelReference.adapters_off(self.loaded.peft)
        elif kind == "precomputed":
            from lmloss.train.modes.preference import STORE_KIND

            self.ctx.reference_store = TokenStore.read(self.reference_path(), STORE_KIND)
        self.reference_kind = kind
        if self.recipe.reference.sync_steps > 0:
            if self.ctx.reference is None:
                raise ValueError(
                    f"reference.sync_steps: {self.recipe.objective!r} runs no reference model "
                    "here (a moving reference needs reference.kind = 'copy')"
                )
            if self.recipe.train.parallel == "fsdp2" and self.world.active:
                raise ValueError(
                    "reference.sync_steps is not supported with train.parallel = 'fsdp2'"
                )

    def reference_path(self) -> Path:
        if self.recipe.reference.path is not None:
            return Path(self.recipe.reference.path)
        data = self.recipe.data
        base = Path(data.path) if data.path else self.run_dir / "data" / f"{data.task}-train.jsonl"
        return base.with_name(base.name + ".reference.safetensors")

    def _examples(self) -> list:
        rows, source = self.checked.table.rows, self.checked.table.source
        self.mode.check_columns(rows, source)
        encoded = encode_rows(self.mode.encode, rows, self.checked.table.positions, source)
        examples = [e for e in encoded if e is not None]
        report = self.encoder.report
        report.rows = len(rows)
        for line in report.lines():
            self.echo(line)
        if not examples:
            raise ValueError(f"{source}: no row is left to train on (see the length report)")
        if self.recipe.data.packing:
            examples = pack(examples, self.recipe.data.max_length)
            self.echo(
                f"  packed into {len(examples)} sequences of <= {self.recipe.data.max_length}"
            )
        return examples

    def _steps_from_epochs(self) -> None:
        """``train.epochs`` passes over the examples, as optimizer steps (``max_steps``)."""
        train = self.recipe.train
        if train.epochs is None:
            return
        per_step = train.batch_size * train.grad_accum
        steps = max(1, math.ceil(train.epochs * len(self.examples) / per_step))
        self.recipe = dataclasses.replace(
            self.recipe, train=dataclasses.replace(train, max_steps=steps)
        )
        self.ctx.recipe = self.recipe
        self.echo(f"train.epochs = {train.epochs:g}: {steps} steps of {per_step} examples")

    def _save_recipe(self) -> None:
        """The recipe as run: ``train.device``/``precision``/``threads`` as resolved here."""
        recipe = self.recipe.as_dict()
        recipe["train"].update(
            device=str(self.device),
            precision=self.compute.precision,
            threads=self.compute.threads,
        )
        (self.run_dir / "recipe.json").write_text(json.dumps(recipe, indent=2))

    # ---- checkpoints

    def _state(self) -> dict:
        return {"scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict()}

    def save(self) -> checkpoint.Checkpoint:
        """Rank 0 writes (every replica holds the same state); the others wait for it."""
        root = self.run_dir / "checkpoints"
        saved = checkpoint.Checkpoint(root / f"step-{self.step:06d}", self.step)
        trainable, optimizer_state = self.trainable, None
        if self.sharded:  # gathered whole by every rank, written by rank 0
            trainable = full_tensors(self.trainable)
            optimizer_state = full_optimizer_state(self.optimizer)
        if self.world.is_main:
            saved = checkpoint.save(
                root,
                self.step,
                trainable,
                self.optimizer,
                self._state(),
                keep=self.recipe.output.keep,
                optimizer_state=optimizer_state,
            )
        self.world.barrier()
        return saved

    def _resume(self) -> None:
        restored = checkpoint.restore(
            self.run_dir / "checkpoints", self.trainable, self.optimizer, self.echo
        )
        if restored is None:
            raise ValueError(
                f"--resume: no checkpoint in {self.run_dir / 'checkpoints'} (the run stopped "
                "before its first save); start over with --overwrite"
            )
        found, state = restored
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.step = found.step
        self.resumed = True
        if self.world.is_main:
            for name in (METRICS, EVALS, SAMPLES):
                truncate_after(self.run_dir / name, self.step)
        self.echo(f"resumed from {found.path} (step {self.step})")

    # ---- one optimizer step

    def global_count(self, value: int) -> int:
        """The count over the whole optimizer step, summed over data-parallel ranks."""
        return self.world.sum(value)

    def sample_micro_batches(self, count: int) -> list[Batch]:
        """``count`` fresh micro-batches on the device (online modes generate here)."""
        size = self.recipe.train.batch_size
        micro = [[self.examples[i] for i in self.sampler.take(size)] for _ in range(count)]
        # every rank draws the same global order and trains its slice of each micro-batch
        shard = self.world.shard(size)
        batches: list[Batch] = [self.mode.prepare_shard(m, shard) for m in micro]
        for batch in batches:
            batch.tensors = to_device(batch.tensors, self.device)
        return batches

    def train_step(self) -> dict:
        train = self.recipe.train
        # fresh micro-batches, or those of an earlier generation (policy.num_iterations, ...)
        batches = self.rollouts.next_step(self.sample_micro_batches)
        tokens = self.global_count(sum(b.tokens for b in batches))
        examples = self.global_count(sum(b.examples for b in batches))
        by_tokens = self.mode.normalizer() == TOKENS
        if by_tokens and tokens == 0:
            raise ValueError(f"step {self.step + 1}: the batch has no trained token")
        metrics: dict[str, float] = {}
        losses = []
        for index, batch in enumerate(batches):
            if not batch.examples:  # online pairs: every group of it tied, nothing to learn
                if not examples:  # nor in the whole step: its metrics are the step's
                    for key, value in batch.metrics.items():
                        metrics[key] = metrics.get(key, 0.0) + value / len(batches)
                continue
            share = batch.examples / examples
            last = index == len(batches) - 1
            # the reducer sums over ranks once per step, overlapping the last backward
            syncs = self.replicated is None or last
            with nullcontext() if syncs else self.replicated.no_sync():
                out = self.mode.loss(batch, tokens if by_tokens else None)
                loss = out.loss if by_tokens else out.loss * share
                losses.append(float(loss.detach()))
                # a bad micro-batch is not backpropagated, except under the DDP wrapper,
                # whose reducer must meet every rank's (the guard then sees the bad norm)
                if math.isfinite(losses[-1]) or self.replicated is not None:
                    loss.backward()
            for key, value in {**out.metrics, **batch.metrics}.items():
                metrics[key] = metrics.get(key, 0.0) + share * _scalar(value)
        params = list(self.trainable.values())
        self.world.sum_gradients(self.summed_after)
        total = self.world.sum(sum(losses))
        metrics = self.world.sum_dict(metrics)
        norm_limit = train.max_grad_norm if train.max_grad_norm > 0 else float("inf")
        if self.sharded:
            grad_norm = self.world.clip_grad_norm(params, norm_limit)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, norm_limit)
        lr = self.scheduler.get_last_lr()[0]
        row = {"loss": total, "lr": lr, "grad_norm": float(grad_norm), "tokens": tokens, **metrics}
        problem = first_problem(losses, float(grad_norm))
        if self.world.sum(int(problem is not None)):  # every rank skips or stops together
            problem = problem or "another rank's loss is not finite"
            self.guard.bad_step(self.step + 1, problem)
            self.echo(
                f"step {self.step + 1}: {problem}; update skipped ({self.guard.skipped} so far)"
            )
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            return {**row, "skipped": 1}
        self.guard.good_step()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        sync = self.recipe.reference
        if sync.sync_steps and self.step % sync.sync_steps == 0:
            self.ctx.reference.mix_in(self.model, sync.sync_alpha)
        if self.world.sum(int(not finite(params))):
            raise self.guard.bad_parameters(self.step)
        return row

    # ---- evaluation

    def evaluate(self, size: int | None = None) -> dict | None:
        """The held-out metric on ``size`` problems (default ``eval.size``)."""
        config = self.recipe.eval
        if config.task is None:
            return None
        result = evaluate_task(
            self.model,
            self.ctx.tokenizer,
            self.encoder,
            config.task,
            size=size or config.size,
            seed=config.seed,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size,
            autocast=self.autocast(),
        )
        return result

    def _log_eval(self, reporter: Reporter, label: str, size: int | None = None) -> dict | None:
        """The held-out task's result (``metrics``, ``samples``), with ``eval_loss`` among the
        metrics when there is a held-out loss; None when there is neither."""
        if not self.world.is_main:  # rank 0 evaluates; the others meet it at the next step
            return None
        loss = None
        if self.heldout is not None:
            loss = self.heldout.loss()
            reporter.evaluation({"step": self.step, "eval_loss": loss})
            reporter.write(f"eval loss {label} (step {self.step}): {loss:.4g}")
            samples = self.heldout.samples(self.recipe.eval.max_new_tokens, self.autocast())
            append_samples(self.run_dir, self.step, samples)
        result = self.evaluate(size)
        if result is None:
            return None if loss is None else {"metrics": {"eval_loss": loss}, "samples": []}
        metrics = result["metrics"]
        reporter.evaluation({"step": self.step, **metrics})
        shown = ", ".join(f"{k} {v:.3g}" for k, v in metrics.items() if k != "problems")
        reporter.write(f"eval {label} (step {self.step}, {metrics['problems']} held-out): {shown}")
        for sample in result["samples"]:
            reporter.write(
                f"  Q: {sample['prompt']}\n  A: {sample['output']!r} (expected {sample['answer']})"
            )
        if loss is not None:
            metrics["eval_loss"] = loss
        return result

    # ---- the run

    def run(self) -> Summary:
        recipe, output = self.recipe, self.recipe.output
        start = time.perf_counter()
        reporter = Reporter(
            self.run_dir,
            recipe.train.max_steps,
            self.step,
            bar=output.progress,
            enabled=self.world.is_main,
            loggers=loggers.open_loggers(self.report_to, self.run_dir, recipe.as_dict())
            if self.world.is_main
            else [],
        )
        summary = Summary(self.run_dir, self.step, 0.0)
        stop = signals.StopRequest.install()  # SIGINT/SIGTERM: end at the step, saved
        try:
            if recipe.eval.before and not self.resumed:
                summary.before = self._log_eval(reporter, "before training")
            while self.step < recipe.train.max_steps:
                tick = time.perf_counter()
                row = self.train_step()
                row = {"step": self.step, **row, "seconds": time.perf_counter() - tick}
                summary.losses.append(row["loss"])
                reporter.step(
                    row,
                    write=self.step % output.log_every == 0 or self.step == recipe.train.max_steps,
                )
                if output.save_every and self.step % output.save_every == 0:
                    self.save()
                if (
                    recipe.eval.every
                    and self.step % recipe.eval.every == 0
                    and self.step < recipe.train.max_steps
                ):
                    self._log_eval(reporter, "during training", recipe.eval.every_size)
                if self.world.sum(int(stop.signal is not None)):  # every rank stops together
                    raise self._stop_on_signal(stop.signal)
            if output.save_every:  # 0: no checkpoint (no optimizer state), only the model
                self.save()
            if recipe.eval.after:
                summary.after = self._log_eval(reporter, "after training")
        finally:
            stop.restore()
            reporter.close()
        if self.world.is_main:
            summary.health = health.assess(
                summary.metrics("before"),
                summary.metrics("after"),
                read_jsonl(self.run_dir / METRICS),
                health.verifier_of(recipe),
            )
        exporting = time.perf_counter()
        if output.save_model:
            self.export(self.run_dir / "model")
        if output.plot and self.world.is_main:
            from lmloss.train.plot import plot_run

            plot_run(self.run_dir)
        summary.export_seconds = time.perf_counter() - exporting
        summary.steps, summary.seconds = self.step, time.perf_counter() - start
        return summary

    def _stop_on_signal(self, signum: int | None) -> signals.Interrupted:
        """Save the step just finished (when the run keeps checkpoints) and say how to
        continue; ``signum`` is ``None`` on a rank that did not receive the signal."""
        saved = self.save().path if self.recipe.output.save_every else None
        return signals.interrupted(signum, self.step, saved, self.recipe.source, self.run_dir)

    def close(self) -> None:
        """Let other processes have the run directory."""
        self.lock.release()

    def abandon(self) -> None:
        """Close after a failure; a new run that did not finish a step leaves its directory
        as it found it (so the corrected rerun is not refused as "already holds a run")."""
        fresh = not getattr(self, "resumed", False) and getattr(self, "step", 0) == 0
        if fresh and isinstance(self.lock, rundir.Claim):
            self.lock.undo()
        else:
            self.close()

    def export(self, path: Path) -> None:
        """The trained model in Hugging Face layout (safetensors), loadable by ``lmloss eval``.
        Rank 0 writes it (under FSDP2 after every rank helped gather the blocks)."""
        with unwrapped(self.model, self.replicated):
            self._export(path)

    def _export(self, path: Path) -> None:
        if self.sharded:
            whole = full_tensors(dict(self.model.state_dict()))
            if self.world.is_main:
                path.mkdir(parents=True, exist_ok=True)
                self.model.save_pretrained(path, state_dict=whole, safe_serialization=True)
                self.ctx.tokenizer.save_pretrained(path)
            return
        if not self.world.is_main:
            return
        export_run_model(
            self.model,
            self.ctx.tokenizer,
            path.parent,
            peft=self.loaded.peft,
            base_name=self.recipe.model.name,
            merge_lora=self.recipe.output.merge_lora,
        )


def train(recipe: Recipe, *, resume: bool = False, overwrite: bool = False, echo=print) -> Summary:
    """Train as ``recipe`` says; returns the run's summary (losses, before/after metrics).

    ``resume``: continue from the run directory's newest verified checkpoint;
    ``overwrite``: delete the directory's previous run first (else a used one is refused)."""
    loading = time.perf_counter()
    trainer = Trainer(recipe, resume=resume, overwrite=overwrite, echo=partial(echo))
    load_seconds = time.perf_counter() - loading
    try:
        summary = trainer.run()
        summary.load_seconds = load_seconds
        return summary
    except BaseException:
        trainer.abandon()
        raise
    finally:
        trainer.close()
        if trainer.world.active:
            import torch.distributed as dist

            dist.destroy_process_group()
