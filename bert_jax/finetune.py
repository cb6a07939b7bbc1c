"""Fine-tuning BERT on a downstream task: `train_and_evaluate(config, workdir)`.

    python -m bert_jax finetune --config configs/glue.py:sst2 --workdir DIR --config.init_checkpoint=MODEL_DIR \
        --config.data.source=../shared/data/glue/SST-2

Every task of bert_jax.tasks (GLUE, SQuAD v1.1/v2.0, CoNLL-2003, SWAG, your own CSV/TSV/JSONL) runs through the
same code; the task object says how to read, featurize, decode and score, and its `kind` picks the head, the loss
and the outputs from the table bert_jax/heads.py KINDS (nothing here branches on the kind). The splits are read
and featurized by bert_jax/finetune_data.py; the model runs over them, and its predictions are written, by
bert_jax/predict.py (also the `predict` command). The training loop is the one pretraining uses
(bert_jax/trainer.py): sharded state, Orbax checkpoints, SIGTERM, resume. The run, top to bottom (the banner
sections below follow it):

  1. the config is validated once, before anything is read or compiled (unknown keys, a missing
     init_checkpoint, bad values: a ValueError naming the key);
  2. the task and its data: each split read (local files in the original format, or TFDS), its read report
     printed (rows skipped and why), featurized with the checkpoint's tokenizer;
  3. the encoder from `init_checkpoint` (a bert_jax model directory, or a pretraining workdir's checkpoint): only
     the 'bert' subtree is loaded, the head is new, the optimizer fresh; any size mismatch is a clear error;
  4. the objective of the task's kind (the losses), and the shuffled training batches (a new permutation each epoch);
  5. evaluation on dev after each epoch; the best weights by the task's metric are kept as a bert_jax model
     directory `<workdir>/model` (with the fine-tuned head, so `predict` and `export-hf` read it);
  6. at the end, that model's predictions for the dev and test splits in the task's own format
     (`<workdir>/predictions`: GLUE submission TSVs, SQuAD predictions/n-best/null-odds JSON, CoNLL columns).

The workdir and init_checkpoint may be bucket URLs (gs://bucket/run): their files go through bert_jax.paths.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import time
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from bert_jax import console, length_buckets, optim, paths, sharding, trainer
from bert_jax import workdir as workdirs
from bert_jax.checkpoints import Checkpointer
from bert_jax.finetune_data import Split, is_tfds, load_data, split_paths
from bert_jax.heads import INPUT_KEYS, KINDS, FinetuneObjective
from bert_jax.model import BertConfig
from bert_jax.predict import FINETUNE_FILE, evaluate_splits, make_forward, run_model, write_into_directory
from bert_jax.tasks import TASK_SETTINGS, task_options
from bert_jax.tokenizer import TRUNCATION
from bert_jax.train_metrics import MetricsWriter, peak_flops_per_device

# ----------------------------------------------------------------------------------------------------
# 1. Config: every key, its default (the BERT fine-tuning recipe), and validation
# ----------------------------------------------------------------------------------------------------


# Settings a workdir's checkpoints depend on: the head's shape (task, labels, kind), the encoder and its
# vocabulary (init_checkpoint: resuming takes the tokenizer from it), the parameter layout and the optimizer
# state's structure. A restart that changes one is refused (bert_jax/workdir.py); the others may change.
CHECKPOINT_KEYS = ("task.name", "task.kind", "task.labels", "init_checkpoint", "model.scan_layers", "optimizer.name")


def default_config() -> ml_collections.ConfigDict:
    """Every key a fine-tuning config has; configs/{glue,squad,ner,swag,classify}.py start from this."""
    c = ml_collections.ConfigDict()
    c.task = dict(
        name="",  # sst2, cola, ..., squad_v1.1, squad_v2.0, conll2003, swag, classify (bert_jax.tasks.TASK_NAMES)
        # classify only: the columns of your CSV/TSV/JSONL files, and the labels (() = inferred from train)
        text_column="text",
        text_pair_column="",  # '' = single texts
        label_column="label",
        labels=(),
        kind="classification",  # classify: classification | regression
        num_choices=4,  # swag only
    )
    # A bert_jax model directory (`python -m bert_jax convert`, or a pretraining run's <workdir>/model), or a
    # pretraining workdir (its Orbax checkpoint: the latest, or init_checkpoint_step).
    c.init_checkpoint = ""
    c.init_checkpoint_step = -1
    c.data = dict(
        source="",  # a folder in the task's original layout, or 'tfds' / 'tfds:<name>', for every split below left ''
        train="",  # a file, folder or 'tfds' for this split alone
        dev="",  # MNLI: a folder/tfds gives matched and mismatched; files: 'dev_matched.tsv,dev_mismatched.tsv'
        test="",  # '' = the source's test split(s) when it has them (predictions only)
        tfds_data_dir="",
        max_seq_length=128,
        # A sentence pair longer than max_seq_length: 'original' cuts it as Google's run_classifier.py does,
        # 'longest_first' as Hugging Face's tokenizers (they differ in which side keeps an odd token).
        truncation="original",
        doc_stride=128,  # SQuAD windows
        max_query_length=64,  # SQuAD
        # Batches padded to the smallest bucket length that holds their longest example (bert_jax/length_buckets.py),
        # training batches grouped by length as Hugging Face's group_by_length; False: every batch max_seq_length.
        length_buckets=True,
        bucket_lengths=(),  # () = 32, 64, 128, ... up to max_seq_length; else increasing, ending at max_seq_length
        max_train_examples=0,  # 0 = all; else the first N (quick runs)
        max_eval_examples=0,
        strict=False,  # True: the first bad row is an error instead of being skipped and reported
    )
    c.model = dict(
        hidden_dropout_rate=0.1,
        attention_dropout_rate=0.1,
        dtype="float32",  # compute dtype (bfloat16 on accelerators); parameters stay float32
        attention_impl="auto",
        scan_layers=False,
        remat_policy="none",
    )
    c.optimizer = dict(
        name="adamw",  # the original BERT AdamW (bert_jax/optim.py) | lamb
        learning_rate=3e-5,  # the paper's grid: 5e-5, 3e-5, 2e-5
        warmup_fraction=0.1,
        weight_decay=0.01,
        b1=0.9,
        b2=0.999,
        eps=1e-6,
        clip_norm=1.0,
    )
    c.train = dict(
        batch_size=32,
        num_epochs=3.0,
        num_steps=0,  # 0: num_epochs over the training features
        micro_batches=1,
        seed=0,  # head initialisation, dropout, and the order of the training examples
        log_every=50,
        eval_every=0,  # steps; 0: after every epoch (and at the end)
        eval_batch_size=64,
        checkpoint_every=0,  # steps; 0: at every evaluation (every epoch)
        keep_checkpoints=1,
        async_checkpoints=True,
        keep_best=True,  # <workdir>/model = the best weights by the task's metric (False: the last weights)
        predict_test=True,  # write predictions for the test split(s) at the end
        tensorboard=True,
        peak_flops_per_device=0.0,
    )
    c.decode = dict(  # SQuAD answer decoding
        n_best_size=20,
        max_answer_length=30,
        null_score_diff_threshold=0.0,  # v2.0: predict "" when null score - best span score exceeds this
    )
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    return c


def _key_paths(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_key_paths(v, path + "."))
        else:
            out[path] = v
    return out


def _get(config, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def _type_error(want, have) -> Optional[str]:
    """What `have` should have been, given the default `want`; None when its type fits."""
    if isinstance(want, bool) or isinstance(have, bool):
        return None if isinstance(want, bool) == isinstance(have, bool) else f"a {type(want).__name__}"
    if isinstance(want, int) and not (isinstance(have, int) or (isinstance(have, float) and have.is_integer())):
        return "an integer"
    if isinstance(want, float) and not isinstance(have, (int, float)):
        return "a number"
    if isinstance(want, str) and not isinstance(have, str):
        return "a string"
    if isinstance(want, (tuple, list)) and not isinstance(have, (tuple, list)):
        return "a list"
    return None


def validate_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks a config before anything is read or compiled; returns a complete, locked copy.

    Keys missing from `config` take their defaults; an unknown key, a value of the wrong type or out of range,
    a missing init_checkpoint or data path is a ValueError / FileNotFoundError naming the key.
    """
    from bert_jax.model import ATTENTION_IMPLS, DTYPES, REMAT_POLICIES
    from bert_jax.tasks import TASK_NAMES, get_task

    defaults = _key_paths(default_config().to_dict())
    given = _key_paths(config.to_dict())
    for key, have in given.items():
        if key not in defaults:
            close = difflib.get_close_matches(key, defaults, n=1)
            raise ValueError(f"unknown config key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        wrong = _type_error(defaults[key], have)
        if wrong:
            raise ValueError(f"config.{key}={have!r}: expected {wrong}")
        if isinstance(defaults[key], int) and not isinstance(defaults[key], bool):
            given[key] = int(have)
        if isinstance(defaults[key], float):
            given[key] = float(have)
        if isinstance(defaults[key], (tuple, list)):
            given[key] = tuple(have)
    merged = default_config()
    merged.update_from_flattened_dict(given)

    def bad(key, why):
        raise ValueError(f"config.{key}={_get(merged, key)!r}: {why}")

    # -- the task --
    if not merged.task.name:
        bad("task.name", f"name the task: one of {', '.join(TASK_NAMES)}")
    try:
        family = get_task(merged.task.name, **task_options(merged.task.name, merged.task)).name
    except (ValueError, TypeError) as e:
        raise ValueError(f"config.task: {e}") from None
    base = default_config().task
    for key in ("text_column", "text_pair_column", "label_column", "labels", "kind", "num_choices"):
        if merged.task[key] != base[key] and key not in TASK_SETTINGS.get(family, ()):
            bad(f"task.{key}", f"only the {' / '.join(t for t, keys in TASK_SETTINGS.items() if key in keys)} "
                               f"task takes this option, not {family!r}")
    # -- the checkpoint --
    if not merged.init_checkpoint:
        raise ValueError("config.init_checkpoint: missing; give a bert_jax model directory (python -m bert_jax "
                         "convert writes one from a Google or Hugging Face checkpoint) or a pretraining workdir")
    if not paths.isdir(merged.init_checkpoint):
        raise FileNotFoundError(f"config.init_checkpoint={merged.init_checkpoint!r}: no such directory")
    # -- the data --
    d = merged.data
    if not (d.train or d.source):
        bad("data.train", "no training data: set config.data.source (a folder or 'tfds') or config.data.train")
    for key in ("data.source", "data.train", "data.dev", "data.test"):
        for path in split_paths(_get(merged, key)):
            if not is_tfds(path) and not os.path.exists(path):
                raise FileNotFoundError(f"config.{key}={_get(merged, key)!r}: no such file or folder: {path}")
    if d.max_seq_length < 4:
        bad("data.max_seq_length", "must be at least 4")
    if d.truncation not in TRUNCATION:
        bad("data.truncation", f"expected one of {sorted(TRUNCATION)}")
    if d.doc_stride < 1:
        bad("data.doc_stride", "must be positive")
    if d.max_query_length < 1:
        bad("data.max_query_length", "must be positive")
    try:
        length_buckets.resolve_buckets(d.bucket_lengths, d.max_seq_length)
    except ValueError as e:
        raise ValueError(f"config.{e}") from None
    for key in ("data.max_train_examples", "data.max_eval_examples"):
        if _get(merged, key) < 0:
            bad(key, "must be >= 0 (0: all)")
    # -- model and optimizer --
    if merged.model.dtype not in DTYPES:
        bad("model.dtype", f"must be one of {tuple(DTYPES)}")
    if merged.model.attention_impl not in ATTENTION_IMPLS:
        bad("model.attention_impl", f"must be one of {ATTENTION_IMPLS}")
    if merged.model.remat_policy not in REMAT_POLICIES:
        bad("model.remat_policy", f"must be one of {REMAT_POLICIES}")
    for key in ("model.hidden_dropout_rate", "model.attention_dropout_rate"):
        if not 0.0 <= _get(merged, key) < 1.0:
            bad(key, "must be in [0, 1)")
    if merged.optimizer.name not in optim.OPTIMIZERS:
        bad("optimizer.name", f"must be one of {optim.OPTIMIZERS}")
    if merged.optimizer.learning_rate <= 0:
        bad("optimizer.learning_rate", "must be positive")
    if not 0.0 <= merged.optimizer.warmup_fraction < 1.0:
        bad("optimizer.warmup_fraction", "must be in [0, 1)")
    # -- training --
    t = merged.train
    for key in ("train.batch_size", "train.micro_batches", "train.log_every", "train.eval_batch_size",
                "train.keep_checkpoints"):
        if _get(merged, key) < 1:
            bad(key, "must be at least 1")
    for key in ("train.num_steps", "train.eval_every", "train.checkpoint_every"):
        if _get(merged, key) < 0:
            bad(key, "must be >= 0")
    if t.num_steps == 0 and t.num_epochs <= 0:
        bad("train.num_epochs", "must be positive (or set train.num_steps)")
    if t.batch_size % t.micro_batches:
        bad("train.batch_size", f"must divide into train.micro_batches={t.micro_batches}")
    if merged.decode.n_best_size < 1:
        bad("decode.n_best_size", "must be at least 1")
    if merged.decode.max_answer_length < 1:
        bad("decode.max_answer_length", "must be at least 1")
    for key, axis_size in merged.mesh.items():
        if axis_size == 0 or axis_size < -1:
            bad(f"mesh.{key}", "must be a positive size or -1")
    merged.lock()
    return merged


def check_against_mesh(config, mesh) -> None:
    """Batches must split evenly over the data-parallel devices (and training batches over micro-batches)."""
    dp = sharding.data_parallel_size(mesh)
    t = config.train
    if (t.batch_size // t.micro_batches) % dp:
        raise ValueError(f"config.train.batch_size={t.batch_size}: each of the {t.micro_batches} micro-batches must "
                         f"divide over the {dp} data-parallel devices (mesh data x fsdp)")
    if t.eval_batch_size % dp:
        raise ValueError(f"config.train.eval_batch_size={t.eval_batch_size}: must divide over the {dp} "
                         "data-parallel devices")


# ----------------------------------------------------------------------------------------------------
# 3. The encoder from init_checkpoint
# ----------------------------------------------------------------------------------------------------


def model_overrides(config) -> dict:
    """The BertConfig fields a fine-tuning run sets; the sizes always come from the checkpoint."""
    m = config.model
    return dict(hidden_dropout_rate=m.hidden_dropout_rate, attention_dropout_rate=m.attention_dropout_rate,
                dtype=m.dtype, attention_impl=m.attention_impl, scan_layers=m.scan_layers,
                remat_policy=m.remat_policy)


def load_encoder(config, mesh) -> tuple[BertConfig, dict, Any, str]:
    """(BertConfig, encoder params (the 'bert' subtree, host arrays), tokenizer, description) of init_checkpoint.

    A bert_jax model directory (bert_jax.json) or a pretraining workdir (checkpoints/ + config.json). Anything
    else, or weights that do not fit their config, is a ValueError naming config.init_checkpoint.
    """
    path = config.init_checkpoint
    where = f"config.init_checkpoint={path!r}"
    overrides = model_overrides(config)
    try:
        if paths.exists(os.path.join(path, "bert_jax.json")):
            from bert_jax.pretrained import load_pretrained

            pretrained = load_pretrained(path, config_overrides=overrides)
            bert, params, tokenizer = pretrained
            what = f"bert_jax model directory {path}"
        elif paths.isdir(os.path.join(path, "checkpoints")):
            bert, params, tokenizer, what = _load_pretraining_workdir(path, config.init_checkpoint_step, overrides,
                                                                      mesh)
        else:
            hint = (f"; did you mean {os.path.join(path, 'model')}?"
                    if paths.exists(os.path.join(path, "model", "bert_jax.json")) else
                    "; convert a Google or Hugging Face checkpoint first: python -m bert_jax convert")
            raise ValueError(f"neither a bert_jax model directory (bert_jax.json) nor a pretraining workdir "
                             f"(checkpoints/){hint}")
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise ValueError(f"{where}: {e}") from None
    if "bert" not in params:
        raise ValueError(f"{where}: no encoder ('bert') parameters")
    if tokenizer.vocab_size > bert.vocab_size:
        raise ValueError(f"{where}: its tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                         f"{bert.vocab_size}: the vocabulary does not belong to these weights")
    if config.data.max_seq_length > bert.max_position_embeddings:
        raise ValueError(f"config.data.max_seq_length={config.data.max_seq_length}: longer than the checkpoint's "
                         f"max_position_embeddings={bert.max_position_embeddings}")
    return bert, params["bert"], tokenizer, what


def _load_pretraining_workdir(path: str, step: int, overrides: dict, mesh):
    """The encoder of a pretraining run's Orbax checkpoint (the trainer's TrainState; only 'bert' is kept)."""
    from bert_jax import pretrain
    from bert_jax.model import is_scanned, unscan_params
    from bert_jax.tokenizer import load_tokenizer

    config_file = os.path.join(path, "config.json")
    if not paths.exists(config_file):
        raise FileNotFoundError(f"{config_file}: missing (the pretraining run's config)")
    raw = paths.read_json(config_file)
    try:
        pretraining = pretrain.validate_config(ml_collections.ConfigDict(raw))
    except ValueError as e:
        raise ValueError(f"{config_file} is not a pretraining config ({e})") from None
    pretraining.unlock()
    data = pretraining.data
    # The run's tokenizer, found as pretraining found it (without re-running its data preparation).
    if data.vocab_file:
        tokenizer = load_tokenizer(data.vocab_file, lower_case=data.lower_case)
    elif pretraining.train.init_checkpoint:
        tokenizer = load_tokenizer(pretraining.train.init_checkpoint)
    elif paths.exists(os.path.join(path, "vocab")):
        tokenizer = load_tokenizer(paths.download_dir(os.path.join(path, "vocab")))
    else:
        raise ValueError(f"{path}: the pretraining run has no tokenizer (synthetic data?); fine-tuning needs one")
    pretraining.model.vocab_size = pretraining.model.vocab_size or tokenizer.vocab_size
    pretraining.mesh = dict(zip(sharding.MESH_AXES, (int(mesh.shape[a]) for a in sharding.MESH_AXES)))
    state = pretrain.load_train_state(pretraining, path, step=None if step < 0 else step, devices=mesh.devices.flat)
    params = pretrain.host_params(state.params)
    if is_scanned(params):
        params = unscan_params(params)
    bert = pretrain.model_config(pretraining, tokenizer).replace(**{**overrides, "scan_layers": False})
    if overrides["scan_layers"]:
        from bert_jax.model import scan_params

        params, bert = scan_params(params), bert.replace(scan_layers=True)
    return bert, params, tokenizer, f"pretraining workdir {path} at step {int(state.step)}"


# ----------------------------------------------------------------------------------------------------
# 4. The training batches (length buckets)
# ----------------------------------------------------------------------------------------------------


def buckets_of(config) -> Optional[tuple[int, ...]]:
    """The bucket lengths batches are padded to, or None when config.data.length_buckets is off."""
    d = config.data
    return length_buckets.resolve_buckets(d.bucket_lengths, d.max_seq_length) if d.length_buckets else None


class TrainBatches:
    """Global batches of the training features, drawn from a new seeded order every epoch.

    The features are one stream of epochs (like tf.data's shuffle + repeat): a batch may span the end of one epoch
    and the start of the next, so no example is dropped. Each process returns its own rows of every global batch.
    The position is the iterator state the trainer checkpoints, so a resumed run goes on with the same batches.

    With `buckets`, each epoch's order groups examples of similar length into batches (length_buckets.grouped_order)
    and every batch is cut to the smallest bucket that holds its longest example, chosen from the whole global
    batch so that every process cuts its rows alike; `sequence_keys` are the features with a token axis.
    """

    def __init__(self, features: Mapping[str, np.ndarray], keys: Sequence[str], batch_size: int, seed: int,
                 rows: Optional[slice] = None, buckets: Optional[Sequence[int]] = None,
                 sequence_keys: Sequence[str] = INPUT_KEYS):
        self.arrays = {k: features[k] for k in keys}
        self.size = len(features["input_ids"])
        self.batch_size, self.seed = batch_size, seed
        self.rows = rows or slice(0, batch_size)
        self.buckets, self.sequence_keys = buckets, tuple(sequence_keys)
        self.lengths = length_buckets.example_lengths(features["attention_mask"]) if buckets else None
        self.position = 0  # feature rows handed out so far, over all epochs
        self._order = (None, None)  # (epoch, its order): consecutive batches mostly fall in one epoch

    def order(self, epoch: int) -> np.ndarray:
        """The feature indices of an epoch, in the order they are handed out."""
        if self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            if self.buckets is None:
                order = rng.permutation(self.size)
            else:
                first_batch = -(epoch * self.size) % self.batch_size  # rows that finish the previous epoch's batch
                order = length_buckets.grouped_order(self.lengths, self.batch_size, rng, first_batch)
            self._order = (epoch, order)
        return self._order[1]

    def indices(self, position: int, count: int) -> np.ndarray:
        """The feature indices of stream positions [position, position + count)."""
        out = []
        while count > 0:
            epoch, offset = divmod(position, self.size)
            take = min(count, self.size - offset)
            out.append(self.order(epoch)[offset:offset + take])
            position, count = position + take, count - take
        return np.concatenate(out)

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: Mapping) -> None:
        self.position = int(state["position"])

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        chosen = self.indices(self.position, self.batch_size)  # the global batch
        self.position += self.batch_size
        batch = {k: v[chosen[self.rows]] for k, v in self.arrays.items()}
        if self.buckets is None:
            return batch
        length = length_buckets.bucket_for(int(self.lengths[chosen].max()), self.buckets)
        return length_buckets.trim(batch, length, self.sequence_keys)


def training_steps(config, num_features: int) -> tuple[int, int]:
    """(total steps, steps per epoch): num_epochs over the features (run_classifier.py's int(N / B * epochs))."""
    per_epoch = max(1, math.ceil(num_features / config.train.batch_size))
    total = config.train.num_steps or max(1, int(num_features / config.train.batch_size * config.train.num_epochs))
    return total, min(per_epoch, total)


# ----------------------------------------------------------------------------------------------------
# 6. Export: the fine-tuned model directory
# ----------------------------------------------------------------------------------------------------


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def finetune_record(config, task, step: int, metrics: Mapping) -> dict:
    """finetune.json: what `predict` needs to rebuild the task and its features from a model directory."""
    options = task_options(config.task.name, config.task)
    if "labels" in options or task.name == "classify":
        options["labels"] = list(task.labels)
    return {"task": task.name, "task_options": options, "kind": task.kind, "labels": list(task.labels),
            "data": {k: config.data[k] for k in ("max_seq_length", "truncation", "doc_stride", "max_query_length",
                                                 "bucket_lengths")},
            "decode": dict(config.decode), "step": step, "metrics": dict(metrics),
            "init_checkpoint": paths.absolute(config.init_checkpoint)}


def export_model(directory: str, bert: BertConfig, params, tokenizer, task, record: dict) -> None:
    """Writes (or replaces: atomically on a local disk, manifest last in a bucket, see paths.publish_dir) a bert_jax
    model directory holding the encoder and the fine-tuned head."""
    from bert_jax.pretrain import host_params
    from bert_jax.pretrained import MANIFEST_FILE, save_pretrained

    params = host_params(params)
    staging = f"{directory}.tmp-{record['step']}"
    if jax.process_index() == 0 and paths.exists(staging):
        paths.rmtree(staging)
    _sync("finetune export staging")
    labels = list(task.labels) if KINDS[task.kind].class_labels else None
    save_pretrained(staging, bert, params, tokenizer, task=KINDS[task.kind].hf_task, labels=labels, fresh=[],
                    source={"format": "bert_jax", "finetuned_from": record["init_checkpoint"],
                            "task": task.name, "step": record["step"]})
    if jax.process_index() == 0:
        paths.write_json(os.path.join(staging, FINETUNE_FILE), record)
        paths.publish_dir(staging, directory, last=MANIFEST_FILE)
    _sync("finetune export done")


# ----------------------------------------------------------------------------------------------------
# 7. The run
# ----------------------------------------------------------------------------------------------------


def _optimizer(config, total_steps: int):
    o = config.optimizer
    return optim.make_optimizer(o.name, learning_rate=o.learning_rate,
                                warmup_steps=int(o.warmup_fraction * total_steps), total_steps=total_steps,
                                weight_decay=o.weight_decay, b1=o.b1, b2=o.b2, eps=o.eps, clip_norm=o.clip_norm)


@dataclasses.dataclass
class Setup:
    """Everything a run builds before its first step (tests and notebooks inspect it)."""

    config: ml_collections.ConfigDict  # validated and locked
    workdir: str
    mesh: Any
    bert: BertConfig
    tokenizer: Any
    task: Any  # bert_jax.tasks.Task, with its labels settled
    train: Split
    dev: list  # of Split; several for MNLI
    test: list
    objective: FinetuneObjective
    total_steps: int
    steps_per_epoch: int
    eval_every: int
    tx: Any
    schedule: Any
    checkpointer: Checkpointer  # open: the caller closes it
    state: trainer.TrainState
    shardings: trainer.TrainState
    data_state: Optional[dict]  # the input position of a restored checkpoint


def prepare(config: ml_collections.ConfigDict, workdir: str, devices: Optional[Sequence] = None) -> Setup:
    """Validates the config, reads the data, loads the encoder, and creates or restores the train state.

    Takes the workdir's lock (bert_jax.workdir): train_and_evaluate releases it at its end; a caller of prepare
    alone holds it until workdir.release(setup.workdir) or the process's exit."""
    from bert_jax.tasks import get_task

    config = validate_config(config)
    workdir = workdirs.prepare(workdir, config, incompatible=CHECKPOINT_KEYS, path_keys=("init_checkpoint",),
                               defaults=default_config().to_dict(), what="task and model")
    mesh = sharding.make_mesh(dict(config.mesh), devices)
    check_against_mesh(config, mesh)
    bert, encoder, tokenizer, source = load_encoder(config, mesh)
    task = get_task(config.task.name, **task_options(config.task.name, config.task))
    task, train, dev, test = load_data(config, task, tokenizer)

    objective = FinetuneObjective.for_task(task, bert)
    total_steps, steps_per_epoch = training_steps(config, len(train))
    tx, schedule = _optimizer(config, total_steps)
    eval_every = min(config.train.eval_every or steps_per_epoch, total_steps)
    # Before the Checkpointer, which already cleans up in the workdir: a rejected run changes nothing there.
    workdirs.check_checkpoint_shapes(workdir, trainer.abstract_train_state(
        objective, tx, trainer.state_shardings(objective, tx, mesh)), what="task and model")
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                                save_every=config.train.checkpoint_every or eval_every,
                                keep_last=config.train.keep_checkpoints, async_save=config.train.async_checkpoints)
    try:
        state, shardings, data_state = _initial_state(config, objective, tx, mesh, checkpointer, encoder, source)
    except BaseException:
        checkpointer.close()
        raise
    workdirs.write_config(workdir, config)  # only now: the run is accepted and its state restored
    return Setup(config=config, workdir=workdir, mesh=mesh, bert=bert, tokenizer=tokenizer, task=task, train=train,
                 dev=dev, test=test, objective=objective, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                 eval_every=eval_every, tx=tx, schedule=schedule, checkpointer=checkpointer, state=state,
                 shardings=shardings, data_state=data_state)


def _initial_state(config, objective, tx, mesh, checkpointer, encoder, source):
    """Resume from the workdir's latest checkpoint; else a fresh state (new head, fresh optimizer) whose encoder
    is replaced by the checkpoint's."""
    resumed = trainer.resume(objective, tx, mesh, checkpointer, console.announce, what="task and model")
    if resumed is not None:
        return resumed
    expected = jax.eval_shape(lambda: nn.meta.unbox(objective.init_params(jax.random.PRNGKey(0))))["bert"]
    trainer.check_same_shapes(expected, encoder, what=f"config.init_checkpoint={config.init_checkpoint!r} encoder")
    params = {"bert": encoder, **objective.init_head(jax.random.PRNGKey(config.train.seed))}
    state, shardings = trainer.create_train_state(objective, tx, mesh, config.train.seed, params=params)
    console.announce(f"encoder from the {source}; new {objective.kind} head, fresh optimizer")
    return state, shardings, None


@workdirs.releases_locks
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, hooks: Sequence = (),
                       devices: Optional[Sequence] = None) -> dict:
    """Fine-tunes per `config` in `workdir` (resuming from its latest checkpoint if there is one).

    Returns {"state", "best" (step and dev metrics of the exported model), "metrics" (that model's dev metrics),
    "predictions" (paths written), "model_dir"}. `hooks` are called as hook(step, state) after every step.
    """
    started = time.time()
    setup = prepare(config, workdir, devices)
    config, workdir, mesh, task = setup.config, setup.workdir, setup.mesh, setup.task
    kind = KINDS[task.kind]
    model_dir = os.path.join(workdir, "model")
    best_file = os.path.join(workdir, "best.json")
    best = paths.read_json(best_file) if paths.exists(best_file) else None
    forward = make_forward(setup.objective, mesh, setup.shardings.params)

    def outputs_for(params):
        return lambda split: run_model(forward, params, split.features, config.train.eval_batch_size, mesh,
                                       buckets_of(config), kind.per_token)

    def keep(state, metrics: dict) -> None:
        nonlocal best
        step = int(state.step)
        export_model(model_dir, setup.bert, state.params, setup.tokenizer, task,
                     finetune_record(config, task, step, metrics))
        score = metrics.get(task.best_metric)
        best = {"step": step, "score": score if score is not None and math.isfinite(score) else None,
                "metrics": metrics}
        if jax.process_index() == 0:
            paths.write_json(best_file, best)

    kept = {}  # the step and dev predictions of the evaluation that exported the model in this run

    def evaluate(state):
        metrics, predictions = evaluate_splits(task, setup.dev, outputs_for(state.params), config.decode)
        score = metrics.get(task.best_metric, float("nan"))
        if config.train.keep_best and _improves(score, best):
            keep(state, metrics)
            kept.update(step=int(state.step), predictions=predictions)
            console.announce(f"  new best {task.best_metric}={score:.4f} at step {best['step']}: "
                             f"exported to {model_dir}")
        return metrics

    train_keys = (*INPUT_KEYS, *kind.targets)
    rows = sharding.process_rows(mesh, config.train.batch_size)
    phase = trainer.Phase(
        name="finetune", end_step=setup.total_steps, global_batch_size=config.train.batch_size,
        make_iterator=lambda _: TrainBatches(setup.train.features, train_keys, config.train.batch_size,
                                             config.train.seed, rows, buckets_of(config), kind.sequence_keys),
        tokens_per_sequence=0 if config.data.length_buckets else config.data.max_seq_length)
    console.announce(f"{task.name}: {len(setup.train)} training features, {setup.total_steps} steps of "
                     f"{config.train.batch_size} ({setup.steps_per_epoch} per epoch), evaluation every "
                     f"{setup.eval_every} steps on "
                     f"{', '.join(f'{s.name} ({len(s.examples)})' for s in setup.dev) or 'nothing'}")
    writer = None
    try:
        writer = MetricsWriter(workdir, setup.total_steps, tensorboard=config.train.tensorboard)
        state = trainer.train(
            state=setup.state, train_step=trainer.make_train_step(setup.objective, setup.tx, setup.schedule, mesh,
                                                                  setup.shardings, config.train.micro_batches),
            phases=[phase], mesh=mesh, checkpointer=setup.checkpointer, writer=writer, data_state=setup.data_state,
            log_every=config.train.log_every, eval_every=setup.eval_every if setup.dev else 0,
            evaluate=evaluate if setup.dev else None,
            peak_flops_per_device=peak_flops_per_device(mesh.devices.flat[0], config.train.peak_flops_per_device),
            hooks=hooks)
        # trainer.train returns only at the last step (SIGTERM raises trainer.Preempted: the next run resumes).
        if not config.train.keep_best or not setup.dev or not paths.exists(model_dir):
            keep(state, {})  # the last weights: no dev set to choose by, or keep_best=False
    finally:
        setup.checkpointer.close()
        if writer is not None:
            writer.close()
    result = {"state": state, "best": best, "model_dir": model_dir, "metrics": {}, "predictions": []}

    # The exported model's predictions for every dev and test split, in the task's own formats. When that model
    # is the final state, exported by this run's last evaluation, its weights are in memory and its dev
    # predictions made; otherwise (an earlier best, or a resumed run) it is read back from the model directory.
    decoded = None
    if kept.get("step") == int(state.step):
        params, decoded = state.params, kept["predictions"]
    else:
        from bert_jax.pretrained import load_pretrained

        exported = load_pretrained(model_dir, config_overrides=model_overrides(config))
        params = jax.device_put(exported.params, setup.shardings.params)
    output_dir = os.path.join(workdir, "predictions")
    metrics, predictions = evaluate_splits(task, [*setup.dev, *setup.test], outputs_for(params), config.decode,
                                           decoded)
    written = []
    if jax.process_index() == 0:
        written = write_into_directory(output_dir, task, [(predictions[split.name], split.examples, split.name)
                                                          for split in [*setup.dev, *setup.test]])
        paths.write_json(os.path.join(workdir, "eval_results.json"), {"step": (best or {}).get("step"), **metrics})
    shown = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    console.announce(f"{task.name}: model {model_dir} (step {(best or {}).get('step')})"
                     f"{': ' + shown if shown else ''}; predictions in {output_dir}; {time.time() - started:.0f}s")
    result.update(metrics=metrics, predictions=written)
    return result


def _improves(score: float, best: Optional[dict]) -> bool:
    """A finite score above the best so far (the first evaluation always counts, so a model is kept)."""
    if best is None:
        return True
    return math.isfinite(score) and (best["score"] is None or score > best["score"])
