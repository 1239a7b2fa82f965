"""One ``transformers.Trainer`` step of the bundled SmolLM2 (V = 49152), patched or not.

Variants, each in its own fresh process:

* ``hf`` — the model as loaded: its forward builds the ``[B, T, V]`` logits and Hugging
  Face's cross-entropy upcasts them to float32;
* ``lmloss`` — ``lmloss.hf.patch(model)``: the loss from the final hidden states, no logits;
* ``liger`` — ``liger_kernel.transformers._apply_liger_kernel_to_instance(model)`` with its
  fused linear cross-entropy (Triton kernels: they need a GPU driver, so on a CPU machine
  the row says why it has no figures);
* ``cce`` — ``cut_cross_entropy.transformers.cce_patch(model, impl="torch_compile")`` when
  the installed Cut Cross-Entropy has it; the PyPI release 25.1.1 does not ship the
  ``transformers`` module, and then the row says so.

A child loads the model, builds a ``Trainer`` (AdamW, float32, batch ``--batch`` ×
``--length`` tokens of random ids with the first quarter of each row masked as a prompt)
and trains two steps: the first is a warm-up (it allocates the optimizer state), the second
is measured — its wall time, and the peak resident memory above the resident set just
before it, over forward + backward (activations, logits, loss, and the float32 parameter
gradients every variant allocates, 4 bytes per parameter) and over the whole step (the
AdamW update's temporaries included).

Run: ``OMP_NUM_THREADS=2 PYTHONPATH=src .venv/bin/python benchmarks/hf_patch.py``
(``--quick`` for a 2 × 64-token smoke run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _harness import _reset_peak, _rss_mb, _vm_hwm_mb

VARIANTS = ("hf", "lmloss", "liger", "cce")


def apply(variant: str, model: torch.nn.Module) -> torch.nn.Module:
    if variant == "lmloss":
        import lmloss.hf

        return lmloss.hf.patch(model)
    if variant == "liger":
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model)
        return model
    if variant == "cce":
        from cut_cross_entropy.transformers import cce_patch

        return cce_patch(model, impl="torch_compile")
    return model


def examples(batch: int, length: int, vocab: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(2 * batch):
        ids = torch.randint(0, vocab, (length,), generator=generator)
        labels = ids.clone()
        labels[: length // 4] = -100
        rows.append({"input_ids": ids, "attention_mask": torch.ones(length), "labels": labels})
    return rows


def child(variant: str, batch: int, length: int) -> None:
    import transformers

    from lmloss.models import smollm2

    model, _ = smollm2()
    # GGUF weights arrive dequantized to float32; the GGUF quantizer left on the model would
    # make Trainer refuse to train it as "purely quantized"
    model.hf_quantizer, model.is_quantized = None, False
    model = apply(variant, model.train())

    class Measure(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                self.base = _rss_mb()
                _reset_peak()
                self.start = time.perf_counter()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            if state.global_step == 1:
                self.backward_peak = _vm_hwm_mb() - self.base

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                self.seconds = time.perf_counter() - self.start
                self.peak = _vm_hwm_mb() - self.base

    measure = Measure()
    with tempfile.TemporaryDirectory() as out:
        args = transformers.TrainingArguments(
            output_dir=out, per_device_train_batch_size=batch, max_steps=2, use_cpu=True,
            report_to=[], save_strategy="no", logging_strategy="no", learning_rate=1e-5,
        )  # fmt: skip
        rows = examples(batch, length, model.config.vocab_size)
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=rows, callbacks=[measure]
        )
        trainer.train()
    figures = {"seconds": measure.seconds, "peak_mb": measure.peak}
    print(json.dumps({**figures, "backward_peak_mb": measure.backward_peak}))


def run(variant: str, batch: int, length: int) -> str:
    command = [sys.executable, __file__, "--child", variant, "--batch", str(batch)]
    result = subprocess.run(
        [*command, "--length", str(length)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if "Error" in line]
        why = errors[-1] if errors else f"exit status {result.returncode}"
        return f"| {variant} | — | — | — | failed: {why[:140]} |"
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    seconds, backward, step = (figures[k] for k in ("seconds", "backward_peak_mb", "peak_mb"))
    return f"| {variant} | {seconds:.2f} | {backward:.0f} | {step:.0f} | |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.length = 2, 64
    if args.child:
        child(args.child, args.batch, args.length)
        return
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, ")
    print(f"batch {args.batch} x {args.length} tokens\n")
    print(
        "| variant | step time (s) | peak in forward+backward (MB) | peak in the step (MB) | note |"
    )
    print("|---|---|---|---|---|")
    for variant in args.variants:
        print(run(variant, args.batch, args.length), flush=True)


if __name__ == "__main__":
    main()
