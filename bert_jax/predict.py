"""Running a fine-tuned model over a task's examples: evaluation during fine-tuning, and `predict` on new files.

    python -m bert_jax predict --checkpoint DIR/model --task sst2 --input test.tsv --output SST-2.tsv

    forward = make_forward(objective, mesh, param_shardings)        # jitted, no dropout, outputs by name
    outputs = run_model(forward, params, split.features, 64, mesh, buckets, KINDS[kind].per_token)
    metrics, predictions = evaluate_splits(task, splits, outputs_of, config.decode)

`predict` rebuilds the task and its featurization from a fine-tuned model directory's finetune.json (written by
`python -m bert_jax finetune`, bert_jax/finetune.py), runs the model in length-bucketed batches, decodes, scores
labelled input, and writes the task's own prediction files (GLUE submission TSVs, SQuAD predictions / n-best /
null-odds JSON, CoNLL columns, ...), to a local path or a bucket (bert_jax.paths).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from bert_jax import length_buckets, paths, sharding
from bert_jax.finetune_data import Split, featurize_split
from bert_jax.heads import INPUT_KEYS, KINDS, FinetuneObjective
from bert_jax.pretrained import load_pretrained, read_manifest
from bert_jax.tasks import get_task

FINETUNE_FILE = "finetune.json"  # in a fine-tuned model directory: the task, its options and featurization

# ----------------------------------------------------------------------------------------------------
# Running the model over a split
# ----------------------------------------------------------------------------------------------------


def make_forward(objective: FinetuneObjective, mesh, param_shardings) -> Any:
    """(params, global batch) -> the outputs `task.decode` reads (heads.Kind.outputs), replicated; no dropout."""
    jitted = jax.jit(objective.named_outputs, in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                     out_shardings=sharding.replicated(mesh))
    return sharding.with_mesh(jitted, mesh)


def run_model(forward, params, features: Mapping[str, np.ndarray], batch_size: int, mesh,
              buckets: Optional[Sequence[int]] = None, per_token: Sequence[str] = ()) -> dict:
    """The model's outputs for every feature row, in fixed-size batches; the last batch is padded with filler rows
    that attend to their first position only, and their outputs are dropped.

    Without `buckets`, every batch is max_seq_length long (one compilation). With them, the rows are batched in
    order of length and each batch is cut to its bucket (one compilation per bucket); the outputs come back in the
    rows' order, and the `per_token` outputs ([B, T, ...]) are padded back to max_seq_length with PADDING_LOGIT.
    """
    n, max_len = features["input_ids"].shape[0], features["input_ids"].shape[-1]
    if buckets is None:
        plan = [(np.arange(start, min(start + batch_size, n)), max_len) for start in range(0, n, batch_size)]
    else:
        plan = length_buckets.batches_by_length(length_buckets.example_lengths(features["attention_mask"]),
                                                batch_size, buckets)
    rows = sharding.process_rows(mesh, batch_size)
    pending = []
    for chosen, length in plan:
        real = len(chosen)
        batch = {}
        for key in INPUT_KEYS:
            part = features[key][chosen][..., :length]
            padded = np.zeros((batch_size, *part.shape[1:]), np.int32)
            padded[:real] = part
            batch[key] = padded
        batch["attention_mask"][real:, ..., 0] = 1
        out = forward(params, sharding.global_batch({k: v[rows] for k, v in batch.items()}, mesh, batch_size))
        pending.append((real, out))
    fetched = jax.device_get([out for _, out in pending])
    if not fetched:
        return {}
    outputs = {}
    for key in fetched[0]:
        parts = []
        for (real, _), out in zip(pending, fetched):
            part = np.asarray(out[key])[:real]
            if key in per_token and part.shape[1] < max_len:
                width = [(0, 0)] * part.ndim
                width[1] = (0, max_len - part.shape[1])
                part = np.pad(part, width, constant_values=length_buckets.PADDING_LOGIT)
            parts.append(part)
        gathered = np.concatenate(parts)
        order = np.concatenate([chosen for chosen, _ in plan])
        outputs[key] = np.empty_like(gathered)
        outputs[key][order] = gathered
    return outputs


def decode(task, outputs, split: Split, decode_settings: Mapping):
    """The task's predictions for a split, decoded with the options the task takes from `decode_settings`."""
    return task.decode(outputs, split.features, split.examples, **task.decode_options(decode_settings))


def evaluate_splits(task, splits: Sequence[Split], outputs_of, decode_settings: Mapping,
                    decoded: Optional[Mapping[str, Any]] = None) -> tuple[dict, dict]:
    """({metric: value}, {split: predictions}); with several dev splits (MNLI) the metrics of all but the first
    are prefixed with the split name, and the first split's metrics pick the best checkpoint. `decoded` holds
    splits' predictions already made by the same parameters (not run again)."""
    metrics, predictions = {}, {}
    for i, split in enumerate(splits):
        predicted = (decoded[split.name] if decoded and split.name in decoded
                     else decode(task, outputs_of(split), split, decode_settings))
        predictions[split.name] = predicted
        if split.labeled:
            values = task.evaluate(predicted, split.examples)
            prefix = "" if i == 0 else f"{split.name}_"
            metrics.update({f"{prefix}{k}": float(v) for k, v in values.items()})
    return metrics, predictions


# ----------------------------------------------------------------------------------------------------
# predict: a fine-tuned model directory on new input files
# ----------------------------------------------------------------------------------------------------


def predict(checkpoint: str, input_path: str, output: str, *, task_name: Optional[str] = None,
            split: str = "test", batch_size: int = 64, strict: bool = False, bucketed: bool = True,
            devices: Optional[Sequence] = None) -> dict:
    """Runs a fine-tuned bert_jax model directory on `input_path` (a file in the task's original format) and writes
    the task's predictions to `output`: a file (extra files such as SQuAD's n-best go next to it, named
    `<output stem>.<kind>.json`), or a directory (the task's own file names).

    The task, its options and the featurization come from the directory's finetune.json (written by
    `finetune`); `task_name` must agree with it, and is needed for a directory without one (e.g. a converted
    Hugging Face classifier). Labeled input is also scored. Batches are padded to length buckets (the model
    directory's, else the default ones) unless `bucketed` is False. Returns {"paths", "metrics", "report"}.
    """
    record_file = os.path.join(checkpoint, FINETUNE_FILE)
    record = paths.read_json(record_file) if paths.exists(record_file) else None
    manifest = read_manifest(checkpoint)
    if record is None and not task_name:
        raise ValueError(f"{checkpoint}: no {FINETUNE_FILE} (not written by `finetune`): give the task (--task)")
    if record is not None and task_name and get_task(task_name).name != record["task"]:
        raise ValueError(f"{checkpoint} was fine-tuned for {record['task']!r}, not {task_name!r}")
    name = record["task"] if record else task_name
    options = dict(record["task_options"]) if record else {}
    if not record and name == "classify" and manifest.get("labels"):
        options["labels"] = manifest["labels"]
    task = get_task(name, **options)
    if record:
        # Directories written before the truncation option existed were trained with Hugging Face's truncation.
        data = {"truncation": "longest_first", **record["data"]}
    else:  # e.g. a converted Hugging Face model: the task's own featurization defaults
        data = dict(task.featurization)
    decode_settings = record["decode"] if record else {}  # none: the task's decode defaults

    pretrained = load_pretrained(checkpoint)
    bert, params, tokenizer = pretrained
    kind = KINDS[task.kind]
    if kind.head not in params:
        raise ValueError(f"{checkpoint}: no fine-tuned head ({kind.head!r}) for a {task.kind} task; parts: "
                         f"{', '.join(manifest.get('parts', []))}")
    width = np.shape(params[kind.head]["bias"])[0]
    expected = kind.width(task.num_labels)
    if width != expected:
        raise ValueError(f"{checkpoint}: its {kind.head} head has {width} outputs, task {task.name!r} needs "
                         f"{expected}")

    examples, report = task.read(split, input_path, strict=strict)
    print(f"[{split}] {report.summary()}", flush=True)
    if not examples:
        raise ValueError(f"{input_path}: no usable examples")
    split_data = featurize_split(task, split, examples, tokenizer, data)

    mesh = sharding.make_mesh({"data": -1}, devices)
    if batch_size % sharding.data_parallel_size(mesh):
        raise ValueError(f"batch_size={batch_size}: must divide over the {sharding.data_parallel_size(mesh)} devices")
    objective = FinetuneObjective.for_task(task, bert)
    param_shardings = sharding.logical_shardings(jax.eval_shape(objective.init_params, jax.random.PRNGKey(0)), mesh)
    forward = make_forward(objective, mesh, param_shardings)
    # Only the parts this task's model has: a converted Hugging Face classifier also brings its pretraining heads.
    placed = jax.device_put({k: params[k] for k in param_shardings}, param_shardings)
    buckets = (length_buckets.resolve_buckets(data.get("bucket_lengths", ()), data["max_seq_length"])
               if bucketed else None)
    outputs = run_model(forward, placed, split_data.features, batch_size, mesh, buckets, kind.per_token)
    predictions = decode(task, outputs, split_data, decode_settings)
    metrics = task.evaluate(predictions, examples) if split_data.labeled else None
    written = write_predictions_to(output, task, predictions, examples, split)
    return {"paths": written, "metrics": metrics, "report": report}


# ----------------------------------------------------------------------------------------------------
# Prediction files
# ----------------------------------------------------------------------------------------------------


def write_into_directory(directory: str, task, items) -> list[str]:
    """The task's prediction files for each (predictions, examples, split name) in `directory`, local or in a bucket
    (the tasks' writers use local-file calls, so a bucket gets them uploaded); returns their paths there."""
    with paths.written_locally(directory) as local:
        written = [path for predictions, examples, split in items
                   for path in task.write_predictions(predictions, examples, local, split)]
    return [os.path.join(directory, os.path.relpath(path, local)) for path in written]


def write_predictions_to(output: str, task, predictions, examples, split: str) -> list:
    """The task's prediction files at `output`: a directory (the task's names) or a file (the first file the task
    writes; the others beside it as <stem>.<what><ext>)."""
    if output.endswith(("/", os.sep)) or paths.isdir(output):
        return write_into_directory(output, task, [(predictions, examples, split)])
    parent = os.path.dirname(paths.absolute(output))
    paths.makedirs(parent)
    stem, _ = os.path.splitext(output)
    # Scratch next to the output on a local disk (the files are then renamed into place); a bucket gets uploads.
    with tempfile.TemporaryDirectory(dir=None if paths.is_remote(parent) else parent) as scratch:
        written = task.write_predictions(predictions, examples, scratch, split)
        targets = [output]
        for extra in written[1:]:
            name = os.path.basename(extra)
            name = name[len(split) + 1:] if name.startswith(f"{split}_") else name
            targets.append(f"{stem}.{name}")
        for source, target in zip(written, targets):
            paths.put(source, target)
    return targets
