"""Training metrics: where they go (TensorBoard, metrics.jsonl, console) and what a step costs (FLOPs, MFU).

Only process 0 writes; on the others MetricsWriter does nothing. In the workdir:

    metrics.jsonl      one JSON object per logged step: {"step": 100, "loss": ..., "mlm_accuracy": ..., ...};
                       evaluation lines carry "eval_"-prefixed keys; other records (pretraining's input reader
                       report: {"step": 0, "reader": {...}}) have neither
    tensorboard/       TensorBoard event files (tf.summary), train and eval scalars

and one console line per logged step with a progress bar and the time left. The workdir may be a local directory
or a bucket URL (gs://bucket/run): metrics.jsonl is written through bert_jax.paths, and tf.summary opens URLs itself.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Mapping, Optional

import jax

from bert_jax import paths
from bert_jax.model import BertConfig

# ----------------------------------------------------------------------------------------------------
# FLOPs and MFU
# ----------------------------------------------------------------------------------------------------


def flops_per_sequence(config: BertConfig, seq_length: int, num_masked: int) -> float:
    """Model FLOPs to train on one sequence: forward + backward = 3x the forward matmuls.

    A multiply-add is 2 FLOPs. Per layer (T tokens, hidden H, FFN width I):
        Q, K, V and attention-output projections   4 * 2 T H H
        FFN up and down                            2 * 2 T H I
        attention scores Q K^T and probs @ V       2 * 2 T T H
    Heads, on the pooled [CLS] vector and on the P masked positions only (the MLM head runs on gathered
    positions): pooler 2 H H, MLM transform 2 P H H, MLM decoder 2 P H V, NSP 2 H 2. Embedding lookups,
    LayerNorm, softmax and GELU are not counted (the usual convention; they are a few percent).
    Rematerialisation re-runs some of the forward pass but is not counted: MFU counts the model's work.
    """
    t, h, i, p, v = seq_length, config.hidden_size, config.intermediate_size, num_masked, config.vocab_size
    per_layer = 4 * 2 * t * h * h + 2 * 2 * t * h * i + 2 * 2 * t * t * h
    heads = 2 * h * h + 2 * p * h * h + 2 * p * h * v + 2 * h * 2
    return 3.0 * (config.num_layers * per_layer + heads)


# Dense bf16 peak FLOP/s of one JAX device, from the vendors' data sheets (first match wins, so the more
# specific names come first). One JAX device is one TPU chip from v4 on, one TensorCore before that.
PEAK_FLOPS_BY_DEVICE_KIND = (
    ("TPU v6 lite", 918e12), ("TPU v6e", 918e12),
    ("TPU v5 lite", 197e12), ("TPU v5e", 197e12),
    ("TPU v5p", 459e12), ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("TPU v3", 61.5e12), ("TPU v2", 22.5e12),
    ("H200", 989e12), ("H100", 989e12),
    ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10", 125e12),
    ("V100", 125e12), ("T4", 65e12),
)


def peak_flops_per_device(device: Optional[jax.Device] = None, override: float = 0.0) -> float:
    """Peak FLOP/s of one device: `override` if positive, the table above, or a CPU estimate; 0 if unknown."""
    if override and override > 0:
        return float(override)
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        return cpu_peak_flops()
    for name, flops in PEAK_FLOPS_BY_DEVICE_KIND:
        if name.lower() in device.device_kind.lower():
            return flops
    return 0.0


def cpu_peak_flops() -> float:
    """cores x clock x float32 FLOPs per cycle (2 FMA units: 64 with AVX-512, 32 with AVX2+FMA, else 8).

    An estimate: turbo clocks, one FMA unit per core on some parts and hyperthreads counted as cores all
    move it; set train.peak_flops_per_device to override.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    mhz, flags = 2500.0, ""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        mhz = float(re.search(r"cpu MHz\s*:\s*([\d.]+)", info).group(1))
        flags = re.search(r"flags\s*:(.*)", info).group(1).split()
    except (OSError, AttributeError, ValueError):
        pass
    per_cycle = 64 if "avx512f" in flags else 32 if "fma" in flags else 8
    return cores * mhz * 1e6 * per_cycle


# ----------------------------------------------------------------------------------------------------
# Writer
# ----------------------------------------------------------------------------------------------------


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class MetricsWriter:
    """Writes metrics to TensorBoard, metrics.jsonl and the console, on process 0 only."""

    CONSOLE_KEYS = ("loss", "mlm_loss", "mlm_accuracy", "nsp_accuracy", "learning_rate", "seq_per_sec", "mfu")

    def __init__(self, workdir: str, total_steps: int, *, tensorboard: bool = True, console=sys.stdout):
        self.enabled = jax.process_index() == 0
        self.total_steps = total_steps
        self.console = console
        self._start = time.time()
        self._first_step: Optional[int] = None
        self._jsonl = None
        self._summary = None
        if not self.enabled:
            return
        paths.makedirs(workdir)
        self._jsonl = paths.open(os.path.join(workdir, "metrics.jsonl"), "a")
        if tensorboard:
            import tensorflow as tf  # heavy: imported only where logs are written

            tf.config.set_visible_devices([], "GPU")  # TensorFlow must not take accelerator memory from JAX
            self._tf = tf
            self._summary = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

    def write_train(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        self._write(step, dict(metrics))
        self._print_progress(step, metrics)

    def write_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled or not metrics:
            return
        metrics = {f"eval_{k}": float(v) for k, v in metrics.items()}
        self._write(step, metrics)
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        print(f"  eval @ step {step}: {shown}", file=self.console, flush=True)

    def write_record(self, step: int, record: Mapping) -> None:
        """One metrics.jsonl line that is not scalar metrics: {"step": step, **record} (e.g. the input reader's
        report, {"reader": {...}}); lines of metrics carry "loss" or "eval_" keys, these do not."""
        if self.enabled:
            self._jsonl.write(json.dumps({"step": int(step), **record}) + "\n")
            self._jsonl.flush()

    def write_text(self, step: int, name: str, text: str) -> None:
        if self.enabled and self._summary is not None:
            with self._summary.as_default():
                self._tf.summary.write(name, self._tf.constant(text), step=step, metadata=self._metadata("text"))
            self._summary.flush()

    def _metadata(self, plugin: str):
        # tf.summary.scalar/text live in the tensorboard package, which TensorFlow no longer installs;
        # the core op tf.summary.write with the plugin's name writes the same events.
        from tensorflow.core.framework import summary_pb2

        return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))

    def _write(self, step: int, metrics: dict) -> None:
        self._jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in metrics.items()}}) + "\n")
        self._jsonl.flush()
        if self._summary is not None:
            with self._summary.as_default():
                for name, value in metrics.items():
                    tag = name.replace("eval_", "eval/", 1) if name.startswith("eval_") else f"train/{name}"
                    self._tf.summary.write(tag, self._tf.constant(float(value), self._tf.float32), step=step,
                                           metadata=self._metadata("scalars"))
            self._summary.flush()

    def _print_progress(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._first_step is None:
            self._first_step, self._start = step, time.time()
            eta = ""
        else:
            done = step - self._first_step
            rate = (time.time() - self._start) / max(done, 1)
            eta = f" ETA {_format_duration(rate * (self.total_steps - step))}"
        fraction = step / max(self.total_steps, 1)
        bar = "#" * int(20 * fraction) + "-" * (20 - int(20 * fraction))
        shown = []
        for key in self.CONSOLE_KEYS:
            if key in metrics:
                value = metrics[key]
                shown.append(f"{key}={100 * value:.1f}%" if key == "mfu" else f"{key}={value:.4g}")
        print(f"step {step}/{self.total_steps} [{bar}] {100 * fraction:3.0f}% {' '.join(shown)}{eta}",
              file=self.console, flush=True)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._summary is not None:
            self._summary.close()
            self._summary = None
