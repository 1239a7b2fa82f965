"""The recipe's schema: every section and key of a training run, typed and documented.

A recipe is a TOML file with the sections below; every key has a type, a default and a
line of documentation (``lmloss train --help`` prints them all, see
:func:`lmloss.train.recipe.reference_text`). The ``[objective]`` section takes ``name``
plus the hyper-parameters of that objective, checked against the registry. Parsing and
validation live in :mod:`lmloss.train.recipe`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lmloss import registry
from lmloss.train.formats import FORMATS as DATA_FORMATS


def _doc(text: str, default: Any = dataclasses.MISSING, **choices: Any) -> Any:
    """A dataclass field carrying its documentation (and allowed values) as metadata."""
    return field(default=default, metadata={"doc": text, **choices})


@dataclass(frozen=True)
class ModelConfig:
    """[model] the causal LM to train."""

    name: str = _doc(
        "'smollm2' (the bundled SmolLM2-135M-Instruct, offline), a local Hugging Face model "
        "directory, or a Hub id 'owner/name' (downloaded online, from the Hub cache offline)"
    )
    dtype: str = _doc("parameter dtype", "float32", choices=("float32", "bfloat16"))
    trust_remote_code: bool = _doc("allow the model directory's own Python code", False)
    trainable_blocks: int = _doc(
        "train only the last N transformer blocks and the final norm (-1: the whole model)", -1
    )
    train_head: bool = _doc("train the LM head (tied: also the input embeddings)", True)


@dataclass(frozen=True)
class LoraConfig:
    """[lora] train low-rank adapters through PEFT instead of the full model."""

    enabled: bool = _doc("use LoRA adapters", False)
    r: int = _doc("adapter rank", 8)
    alpha: float = _doc("LoRA scaling numerator (scale = alpha / r)", 16.0)
    dropout: float = _doc("dropout on the adapter input", 0.0)
    target_modules: tuple[str, ...] = _doc(
        "names of the linear layers that get adapters", ("q_proj", "k_proj", "v_proj", "o_proj")
    )


@dataclass(frozen=True)
class DataConfig:
    """[data] where the examples come from and how they become tokens."""

    path: str | None = _doc(
        "local JSONL / Parquet / CSV file (format from the extension), or a Hub data set id "
        "'owner/name' (its train split; downloaded online, from the Hub cache offline)",
        None,
    )
    task: str | None = _doc("built-in generated task instead of a file ('arithmetic')", None)
    task_size: int = _doc("rows generated for a built-in task", 2000)
    columns: dict[str, str] = field(
        default_factory=dict,
        metadata={"doc": "rename columns: {canonical = 'name in the file'}, e.g. {prompt = 'q'}"},
    )
    chat_template: str = _doc(
        "wrap prompts in the tokenizer's chat template ('auto': when it has one)",
        "auto",
        choices=("auto", "on", "off"),
    )
    system_prompt: str | None = _doc("system message put before each prompt (chat template)", None)
    max_length: int = _doc("tokens per sequence (prompt + completion); longer are truncated", 512)
    max_prompt_length: int = _doc("tokens per prompt; see long_prompts", 256)
    long_prompts: str = _doc(
        "a prompt over max_prompt_length: stop with an error, or drop the row (reported)",
        "error",
        choices=("error", "drop"),
    )
    shuffle: bool = _doc("reshuffle the rows every epoch (seeded)", True)
    format: str = _doc(
        "row format (auto: detected from the columns; see README 'Data formats')",
        "auto",
        choices=("auto", *DATA_FORMATS),
    )
    unpair: bool = _doc("turn paired prompt/chosen/rejected rows into unpaired ones (KTO)", False)
    train_on: str = _doc(
        "tokens trained: every assistant turn, the last one, or all tokens (prompt too)",
        "assistant",
        choices=("assistant", "last", "all"),
    )
    packing: bool = _doc(
        "likelihood objectives: pack rows into max_length sequences (attention kept within "
        "each row)",
        False,
    )
    eval_path: str | None = _doc(
        "held-out file in a format like path's: eval loss (and samples.jsonl) at each eval",
        None,
    )


@dataclass(frozen=True)
class TrainConfig:
    """[train] the optimization loop."""

    max_steps: int = _doc("optimizer steps", 100)
    epochs: float | None = _doc(
        "passes over the data instead of max_steps (steps = ceil(epochs * rows / "
        "(batch_size * grad_accum)))",
        None,
    )
    batch_size: int = _doc("examples (policy: prompts) per micro-batch", 8)
    grad_accum: int = _doc("micro-batches per optimizer step", 1)
    lr: float = _doc("peak learning rate of AdamW", 1e-5)
    weight_decay: float = _doc("AdamW decoupled weight decay", 0.0)
    betas: tuple[float, ...] = _doc("AdamW betas", (0.9, 0.999))
    adam_eps: float = _doc("AdamW epsilon", 1e-8)
    schedule: str = _doc(
        "learning-rate schedule after warm-up (wsd: warmup-stable-decay)",
        "constant",
        choices=("constant", "cosine", "wsd"),
    )
    warmup_steps: int = _doc("linear warm-up steps", 0)
    decay_fraction: float = _doc("wsd: fraction of max_steps spent decaying at the end", 0.2)
    min_lr_ratio: float = _doc("cosine / wsd: final learning rate as a fraction of lr", 0.0)
    max_grad_norm: float = _doc("clip the global gradient norm (0: no clipping)", 1.0)
    device: str = _doc(
        "auto (CUDA when available; under torchrun the LOCAL_RANK-th GPU), cpu, cuda or "
        "cuda:N: where the models, batches, generation and evaluation run",
        "auto",
    )
    precision: str = _doc(
        "bf16: autocast matmuls to bfloat16 (the engine still accumulates in float32); auto: "
        "bf16 on GPUs that support it and on CPUs with native bf16 (AVX512-BF16 / AMX), "
        "else fp32",
        "auto",
        choices=("auto", "fp32", "bf16"),
    )
    seed: int = _doc("seed of data order, sampling and initialization", 0)
    threads: int = _doc(
        "torch CPU threads (0: the cores this process may use, shared by torchrun's local ranks)",
        0,
    )
    memory_budget: int | None = _doc("bytes the fused engine may use for a logits tile", None)
    parallel: str = _doc(
        "under torchrun: ddp (full replicas, gradients summed over ranks) or fsdp2 "
        "(fully_shard the transformer blocks; embeddings and head stay replicated)",
        "ddp",
        choices=("ddp", "fsdp2"),
    )
    dist_timeout: float = _doc(
        "under torchrun: seconds a rank waits for a stalled one before the run fails", 300.0
    )
    on_nonfinite: str = _doc(
        "a NaN/inf loss or gradient norm: stop the run, or skip that step's update (logged)",
        "stop",
        choices=("stop", "skip"),
    )
    max_skips: int = _doc("on_nonfinite = 'skip': stop after this many bad steps in a row", 10)


@dataclass(frozen=True)
class _SampledAndJudged:
    """The keys of every section that samples completions from the policy and grades them
    ([policy], [online]): the sampler's and the judge's (train/generation.py, train/judge.py)."""

    max_new_tokens: int = _doc("generation budget per completion", 64)
    temperature: float = _doc("sampling temperature", 1.0)
    top_p: float = _doc("nucleus sampling threshold (1: off)", 1.0)
    top_k: int = _doc("top-k sampling (0: off)", 0)
    rewards: tuple[str, ...] = _doc(
        "reward functions: built-ins ('exact_numeric', 'format_number') or 'module:function'",
        (),
    )
    reward_weights: tuple[float, ...] = _doc("weight of each reward (default: all 1)", ())
    reward_model: str | None = _doc(
        "a reward model (a folder from a bradley_terry run, a sequence-classification model "
        "folder or Hub id) scoring prompt + completion, added to the reward functions",
        None,
    )
    reward_model_weight: float = _doc("weight of the reward model's score", 1.0)


@dataclass(frozen=True)
class PolicyConfig(_SampledAndJudged):
    """[policy] online policy optimization: sampling, rewards, advantages."""

    group_size: int = _doc("completions sampled per prompt (G)", 8)
    rewards: tuple[str, ...] = _doc(
        "reward functions: built-ins ('exact_numeric', 'format_number') or 'module:function'",
        ("exact_numeric",),
    )
    verifier: str | None = _doc(
        "the reward (one of policy.rewards) that says whether an answer is right: the run "
        "flags likely reward hacking when another reward rises while it falls (default: "
        "the task's accuracy grader, 'exact_numeric' for arithmetic, when it is a reward)",
        None,
    )
    advantage: str = _doc("advantage estimator (lmloss.advantages): grpo, rloo, ...", "grpo")
    # the loop around the loss (docs/policy.md): rollout reuse, batch filters, token weights
    num_iterations: int = _doc(
        "passes over each generated batch (PPO epochs; TRL num_iterations): passes after the "
        "first train off-policy against the log-probs recorded at sampling time",
        1,
    )
    steps_per_generation: int = _doc(
        "micro-batches sampled per generation (TRL steps_per_generation; 0: train.grad_accum, "
        "one optimizer step per generation); a multiple of train.grad_accum",
        0,
    )
    dynamic_sampling: bool = _doc(
        "DAPO: drop groups whose rewards are all equal and sample more prompts to refill",
        False,
    )
    max_num_gen_batches: int = _doc(
        "dynamic_sampling: sampling rounds per micro-batch at most; a batch still short then "
        "trains with the groups it has (logged)",
        4,
    )
    mask_truncated_completions: bool = _doc(
        "completions cut off by max_new_tokens get no loss (DAPO; TRL's name)", False
    )
    overlong_buffer: int = _doc(
        "DAPO soft overlong punishment: the last N tokens of max_new_tokens cost up to "
        "overlong_penalty, linearly; a truncated completion costs overlong_penalty (0: off)",
        0,
    )
    overlong_penalty: float = _doc("soft overlong punishment at max_new_tokens", 1.0)
    tis_cap: float = _doc(
        "truncated importance sampling: weight each token by min(pi_train_old / pi_sampler, "
        "tis_cap) where sampling and training log-probs differ (0: off; TRL "
        "vllm_importance_sampling_cap)",
        0.0,
    )
    top_entropy_quantile: float = _doc(
        "train only the top fraction of tokens by sampling-time entropy (1: all; Wang et al. "
        "2025 use 0.2; TRL's name)",
        1.0,
    )
    proxy_min_p: float = _doc(
        "objectives taking proxy_logps (lp_reg): the min-p threshold kappa of the proxy "
        "policy recorded at sampling time",
        0.02,
    )


@dataclass(frozen=True)
class OnlineConfig(_SampledAndJudged):
    """[online] preference objectives on the policy's own samples (online / iterative DPO)."""

    enabled: bool = _doc(
        "sample the pairs from the policy instead of reading them (on whenever the recipe "
        "has an [online] section, unless it says false)",
        False,
    )
    samples: int = _doc("completions sampled per prompt; pair = best vs worst (ties dropped)", 2)
    temperature: float = _doc("sampling temperature", 0.9)


@dataclass(frozen=True)
class ReferenceConfig:
    """[reference] the frozen model of KL-regularized objectives."""

    kind: str = _doc(
        "auto: adapters-off with LoRA, else a frozen copy, none when the objective ignores it",
        "auto",
        choices=("auto", "none", "copy", "adapters_off", "precomputed"),
    )
    path: str | None = _doc(
        "precomputed reference log-probs (default: next to the data, from lmloss precompute)",
        None,
    )
    sync_steps: int = _doc(
        "move the reference every N optimizer steps: ref <- sync_alpha * policy + "
        "(1 - sync_alpha) * ref (TR-DPO; TRL ref_model_sync_steps; 0: never)",
        0,
    )
    sync_alpha: float = _doc(
        "weight of the policy in each reference sync (1: copy it; TRL ref_model_mixup_alpha)",
        0.6,
    )


@dataclass(frozen=True)
class DistillConfig:
    """[distill] the teacher of distillation objectives."""

    teacher: str | None = _doc(
        "teacher model: 'smollm2', a local model directory or a Hub id", None
    )
    topk_file: str | None = _doc(
        "teacher top-k log-probs (safetensors from lmloss precompute) instead of a model", None
    )
    top_k: int = _doc("lmloss precompute: log-probs kept per position", 32)
    temperature: float = _doc(
        "distillation temperature (both models' logits; also the sampling temperature of "
        "lmbda and seq_kd)",
        1.0,
    )
    lmbda: float = _doc(
        "on-policy distillation (GKD): fraction of batches whose completions the student "
        "samples for the teacher to score (1 with reverse_kl: MiniLLM)",
        0.0,
    )
    seq_kd: bool = _doc(
        "sequence-level KD: the other batches train on teacher-sampled completions instead "
        "of the data's",
        False,
    )
    max_new_tokens: int = _doc("lmbda / seq_kd: generation budget per sampled completion", 128)


@dataclass(frozen=True)
class EvalConfig:
    """[eval] held-out metrics (a verifiable task; data.eval_path's loss), before and after."""

    task: str | None = _doc("built-in task to evaluate ('arithmetic'); none: no evaluation", None)
    size: int = _doc("held-out problems", 100)
    seed: int = _doc("seed of the held-out split (disjoint from the training rows)", 0)
    before: bool = _doc("evaluate before the first step", True)
    after: bool = _doc("evaluate after the last step", True)
    every: int = _doc("also evaluate (eval.task, data.eval_path) every N steps (0: never)", 0)
    every_size: int = _doc(
        "problems of the evaluations every N steps: the first of the same held-out problems "
        "(0: eval.size); before and after always use eval.size",
        0,
    )
    max_new_tokens: int = _doc("generation budget per answer (greedy)", 32)
    batch_size: int = _doc("prompts per generate call", 50)


@dataclass(frozen=True)
class OutputConfig:
    """[output] where the run writes, and how often."""

    dir: str = _doc("run directory (metrics, checkpoints, plot, final model)", "runs/latest")
    log_every: int = _doc("write metrics every N steps", 1)
    save_every: int = _doc(
        "checkpoint every N steps, and at the end (0: no checkpoint, only the final model)", 0
    )
    keep: int = _doc("checkpoints kept on disk", 2)
    save_model: bool = _doc("write the final model (safetensors) to run_dir/model", True)
    plot: bool = _doc("draw run_dir/curves.png at the end", True)
    progress: bool = _doc("show a progress bar with ETA and live metrics", True)
    tensorboard: bool | None = _doc("deprecated: use report_to = ['tensorboard']", None)
    report_to: tuple[str, ...] = _doc(
        "metric loggers besides metrics.jsonl: 'tensorboard', 'wandb' (installed separately)",
        (),
    )
    merge_lora: bool = _doc("LoRA runs: also write the merged model to run_dir/model", True)


@dataclass(frozen=True)
class PreferenceConfig:
    """[preference] answers the trainer samples for offline preference objectives: D2O's
    reference samples (drawn once per row from the reference model) and HyPO's on-policy
    samples (objective.hypo_weight; drawn from the model at every step)."""

    samples: int = _doc("answers sampled per prompt (D2O's K; HyPO's samples)", 4)
    max_new_tokens: int = _doc("generation budget per sampled answer", 64)
    temperature: float = _doc("sampling temperature", 1.0)


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "lora": LoraConfig,
    "data": DataConfig,
    "objective": dict,  # name + hyper-parameters, checked against the registry
    "train": TrainConfig,
    "policy": PolicyConfig,
    "online": OnlineConfig,
    "reference": ReferenceConfig,
    "distill": DistillConfig,
    "eval": EvalConfig,
    "output": OutputConfig,
    "preference": PreferenceConfig,
}


@dataclass(frozen=True)
class Recipe:
    model: ModelConfig
    objective: str
    hyper: dict[str, Any]
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    source: str = "<dict>"
    # front-door options set in [objective] (lmloss.train.objective_options)
    options: dict[str, Any] = field(default_factory=dict)
    # [[objective.add]] terms (lmloss.train.objective_sum.Term)
    terms: tuple[Any, ...] = ()
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)

    @property
    def entry(self) -> registry.Entry:
        return registry.get(self.objective)

    def filled_hyper(self) -> dict[str, Any]:
        """Hyper-parameters the trainer sets from ``[policy]`` where ``[objective]`` does not:
        Dr. GRPO's constant normalizer ``max_tokens`` is the generation budget, and GTPO
        compares the ``group_size`` samples of a prompt."""
        if self.entry.family != "policy":
            return {}
        defaults = self.entry.spec.hyper_defaults
        filled = {"max_tokens": self.policy.max_new_tokens, "group_size": self.policy.group_size}
        return {k: v for k, v in filled.items() if k in defaults and k not in self.hyper}

    def as_dict(self) -> dict[str, Any]:
        """The recipe as TOML-ready nested dicts (saved next to each run)."""
        out: dict[str, Any] = {}
        for section in SECTIONS:
            if section == "objective":
                out[section] = {"name": self.objective, **self.hyper, **self.options}
                if self.terms:
                    out[section]["add"] = [
                        {"name": t.name, "weight": t.weight, **t.hyper} for t in self.terms
                    ]
            else:
                values = dataclasses.asdict(getattr(self, section))
                out[section] = {k: v for k, v in values.items() if v is not None}
        return out
