"""Pretraining BERT with masked-LM + next-sentence prediction: `train_and_evaluate(config, workdir)`.

    python -m bert_jax pretrain                                    # tiny BERT on the built-in corpus
    python -m bert_jax pretrain --config configs/pretrain.py:base --workdir DIR \
        --config.data.input_files=../shared/data/wikipedia

The run, top to bottom (the banner sections below follow it):
  1. the config is validated once, before anything compiles (unknown keys, inconsistent settings, an
     unwritable workdir: a ValueError naming the key or path);
  2. the tokenizer: given, taken from `init_checkpoint`, or trained on the built-in corpus;
  3. the model config, built in exactly one place (`model_config`) into a frozen BertConfig;
  4. the mesh, and the train state created already sharded - or restored from the workdir's latest
     checkpoint (automatic resume), or initialised from a bert_jax model directory (`init_checkpoint`);
  5. the sequence-length phases (original BERT: 90% of steps at 128, then 512), each with its own input
     pipeline, batch size and masked-positions count;
  6. the shared training loop (bert_jax/trainer.py): metrics, evaluation, checkpoints, SIGTERM;
  7. export as a bert_jax model directory (`<workdir>/model`) that fill-mask, embed and export-hf read.
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bert_jax import console, optim, paths, pretrain_input, sharding, trainer
from bert_jax import workdir as workdirs
from bert_jax.checkpoints import Checkpointer
from bert_jax.data import builtin_corpus, packing, tfrecord_input
from bert_jax.data.pipeline import PipelineSpec, PretrainingIterator
from bert_jax.data.synthetic import SyntheticPretrainingData
from bert_jax.data.text_reader import resolve_input_files
from bert_jax.model import SIZES, BertConfig, BertForPreTraining, dummy_inputs
from bert_jax.pretrained import Pretrained
from bert_jax.train_metrics import MetricsWriter, flops_per_sequence, peak_flops_per_device

DATA_SOURCES = ("builtin", "files", "synthetic")
PHASE_KEYS = ("fraction", "seq_length", "batch_size", "max_predictions")
PHASE_OPTIONAL_KEYS = ("input_files",)  # '' (the default): config.data.input_files
INPUT_FORMATS = ("auto", "text", "tfrecord")

# ----------------------------------------------------------------------------------------------------
# 1. Config: every key, its faithful default, and validation
# ----------------------------------------------------------------------------------------------------


def default_config() -> ml_collections.ConfigDict:
    """Every key a pretraining config has, with the original BERT-Base recipe as the default.

    configs/pretrain.py starts from this and changes what each named run needs; `validate_config`
    rejects any key not listed here.
    """
    c = ml_collections.ConfigDict()
    c.model = dict(
        size="base",  # tiny | mini | small | medium | base | large (bert_jax.model.SIZES)
        vocab_size=0,  # 0: the tokenizer's vocabulary size
        max_position_embeddings=512,
        hidden_dropout_rate=0.1,
        attention_dropout_rate=0.1,
        gelu="erf",
        dtype="float32",  # compute dtype; parameters and optimizer state stay float32
        attention_impl="auto",
        scan_layers=False,
        remat_policy="none",  # none | full | dots | dots_no_batch
    )
    c.data = dict(
        source="files",  # builtin (CPython's docs) | files (your text) | synthetic (learnable random ids)
        input_files="",  # source=files: text or TFRecords; files, globs or directories, comma-separated
        eval_input_files="",  # held-out text or TFRecords; '' evaluates on nothing (source=builtin holds out one file)
        format="auto",  # auto (text or TFRecords, told apart by content) | text | tfrecord
        allow_mostly_skipped=False,  # train on a text input even if most of its lines/documents are skipped
        vocab_file="",  # vocab.txt, SentencePiece .model, or a directory; '' for builtin: trained on the corpus
        lower_case=True,
        builtin_vocab_size=8000,
        builtin_max_documents=0,  # 0: the whole built-in corpus
        masked_lm_prob=0.15,
        short_seq_prob=0.1,
        whole_word_masking=False,
        dynamic_masking=False,  # RoBERTa-style: new masks each time an example is read
        dupe_factor=10,  # passes over the corpus with fresh random choices (static masking)
        seed=12345,
        # Sequence packing (bert_jax/data/packing.py, SPEC §5): several whole instances per row, attention kept within
        # each. A phase's batch_size still counts instances; they travel in fewer rows (found from the first batch,
        # or packing_rows per global batch). Held-out evaluation stays unpacked (the same losses either way).
        packing=False,
        packing_max_instances=4,  # instances per row at most (NSP slots)
        packing_rows=0,  # rows per global batch; 0: what the first batch needs + 15%
        packing_row_length=0,  # 0: the phase's seq_length; longer rows hold more instances (up to the model's
                               # max_position_embeddings)
    )
    # Sequence-length phases, run in order: a fraction of train.num_steps each, with their own length,
    # global batch size and masked positions per sequence (about 15% of the length).
    c.phases = (
        dict(fraction=0.9, seq_length=128, batch_size=256, max_predictions=20, input_files=""),
        dict(fraction=0.1, seq_length=512, batch_size=256, max_predictions=80, input_files=""),
    )  # input_files: this phase's own files (TFRecords are written at one length), '' for data.input_files
    c.optimizer = dict(
        name="adamw",  # adamw (the original, SPEC §3) | lamb
        learning_rate=1e-4,
        warmup_steps=10_000,
        weight_decay=0.01,
        b1=0.9,
        b2=0.999,
        eps=1e-6,
        clip_norm=1.0,
    )
    c.train = dict(
        num_steps=1_000_000,
        micro_batches=1,  # gradient accumulation: each global batch runs as this many sequential micro-batches
        seed=0,
        init_checkpoint="",  # a bert_jax model directory to start from (continued pretraining)
        log_every=100,
        eval_every=10_000,  # 0: no periodic evaluation
        eval_batches=20,
        checkpoint_every=10_000,
        keep_checkpoints=3,  # the latest K
        keep_every=100_000,  # plus every M-th step (0: none)
        async_checkpoints=True,
        export_every_checkpoint=False,  # also refresh <workdir>/model at every checkpoint
        peak_flops_per_device=0.0,  # for MFU; 0: from the device kind (CPU: estimated)
        tensorboard=True,
    )
    c.mesh = dict(data=-1, fsdp=1, tensor=1)  # -1: the remaining devices
    c.fill_mask_examples = ()  # texts with [MASK] predicted by the final model and printed
    return c


def _key_paths(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping) and path != "phases":
            out.update(_key_paths(v, path + "."))
        else:
            out[path] = v
    return out


def validate_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks a config before anything is built; returns a complete, locked copy.

    Keys missing from `config` take their defaults. Everything that can be checked without the
    tokenizer or the devices is checked here; `check_against_tokenizer` and `check_against_mesh` do
    the rest, still before compilation.
    """
    defaults = _key_paths(default_config().to_dict())
    given = _key_paths(config.to_dict())
    for key in given:
        if key not in defaults:
            close = difflib.get_close_matches(key, defaults, n=1)
            raise ValueError(f"unknown config key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        want, have = defaults[key], given[key]
        if isinstance(want, bool) != isinstance(have, bool) or (
                isinstance(want, (int, float)) and not isinstance(have, (int, float))) or (
                isinstance(want, str) and not isinstance(have, str)):
            raise ValueError(f"config.{key}={have!r}: expected a {type(want).__name__}")
    if "phases" in given:  # a config read back from JSON has lists
        given["phases"] = tuple(dict(phase) if isinstance(phase, Mapping) else phase for phase in given["phases"])
    merged = default_config()
    merged.update_from_flattened_dict(given)

    def bad(key, why):
        raise ValueError(f"config.{key}={_get(merged, key)!r}: {why}")

    if merged.model.size not in SIZES:
        bad("model.size", f"must be one of {tuple(SIZES)}")
    if merged.model.vocab_size < 0:
        bad("model.vocab_size", "must be positive, or 0 for the tokenizer's vocabulary size")
    if merged.data.source not in DATA_SOURCES:
        bad("data.source", f"must be one of {DATA_SOURCES}")
    own_files = [bool(phase.get("input_files")) for phase in merged.phases if isinstance(phase, Mapping)]
    if merged.data.source == "files" and not merged.data.input_files and not (own_files and all(own_files)):
        bad("data.input_files", "data.source='files' needs input files (text or TFRecords), here or in every "
                                "config.phases[i].input_files")
    if merged.data.format not in INPUT_FORMATS:
        bad("data.format", f"must be one of {INPUT_FORMATS}")
    if merged.data.source != "files" and merged.data.format != "auto":
        bad("data.format", f"only for data.source='files' (data.source={merged.data.source!r})")
    if merged.data.source != "files" and any(own_files):
        raise ValueError(f"config.phases[{own_files.index(True)}].input_files: only for data.source='files' "
                         f"(data.source={merged.data.source!r})")
    if merged.data.source == "files" and not merged.data.vocab_file and not merged.train.init_checkpoint:
        bad("data.vocab_file", "data.source='files' needs a vocabulary (or train.init_checkpoint with one)")
    if merged.data.source == "synthetic" and not merged.model.vocab_size:
        bad("model.vocab_size", "data.source='synthetic' has no tokenizer: set the vocabulary size")
    if not 0 < merged.data.masked_lm_prob < 1:
        bad("data.masked_lm_prob", "must be in (0, 1)")
    if merged.optimizer.name not in optim.OPTIMIZERS:
        bad("optimizer.name", f"must be one of {optim.OPTIMIZERS}")
    if merged.optimizer.learning_rate <= 0:
        bad("optimizer.learning_rate", "must be positive")
    for key in ("train.num_steps", "train.micro_batches", "train.log_every", "train.checkpoint_every",
                "train.keep_checkpoints", "train.eval_batches"):
        if _get(merged, key) < 1:
            bad(key, "must be at least 1")
    for key in ("train.eval_every", "train.keep_every", "optimizer.warmup_steps"):
        if _get(merged, key) < 0:
            bad(key, "must be >= 0")
    if merged.optimizer.warmup_steps > merged.train.num_steps:
        bad("optimizer.warmup_steps", f"exceeds train.num_steps={merged.train.num_steps}")
    if merged.train.init_checkpoint and not paths.isdir(merged.train.init_checkpoint):
        bad("train.init_checkpoint", "no such directory (a bert_jax model directory from `convert` or a run)")
    for key, axis_size in merged.mesh.items():
        if axis_size == 0 or axis_size < -1:
            bad(f"mesh.{key}", "must be a positive size or -1")
    _validate_phases(merged)
    _validate_packing(merged)
    merged.phases = tuple(dict(phase, input_files=phase.get("input_files", "")) for phase in merged.phases)
    merged.lock()
    return merged


def _validate_phases(config) -> None:
    phases = config.phases
    if not phases:
        raise ValueError("config.phases: at least one phase is needed")
    total = 0.0
    for i, phase in enumerate(phases):
        where = f"config.phases[{i}]"
        if not isinstance(phase, Mapping) or not set(PHASE_KEYS) <= set(phase) <= {*PHASE_KEYS, *PHASE_OPTIONAL_KEYS}:
            raise ValueError(f"{where}={phase!r}: must be a dict with keys {PHASE_KEYS} (and optionally "
                             f"{PHASE_OPTIONAL_KEYS})")
        if not isinstance(phase.get("input_files", ""), str):
            raise ValueError(f"{where}.input_files={phase['input_files']!r}: must be a string (files, globs or "
                             f"directories, comma-separated)")
        if not 0 < phase["fraction"] <= 1:
            raise ValueError(f"{where}.fraction={phase['fraction']}: must be in (0, 1]")
        total += phase["fraction"]
        for key in ("seq_length", "batch_size", "max_predictions"):
            if not isinstance(phase[key], int) or phase[key] < 1:
                raise ValueError(f"{where}.{key}={phase[key]!r}: must be a positive integer")
        if phase["seq_length"] > config.model.max_position_embeddings:
            raise ValueError(f"{where}.seq_length={phase['seq_length']}: beyond "
                             f"config.model.max_position_embeddings={config.model.max_position_embeddings}")
        if phase["max_predictions"] > phase["seq_length"] - 3:
            raise ValueError(f"{where}.max_predictions={phase['max_predictions']}: more than the "
                             f"{phase['seq_length'] - 3} maskable positions of a sequence")
        if phase["batch_size"] % config.train.micro_batches:
            raise ValueError(f"{where}.batch_size={phase['batch_size']}: not divisible by "
                             f"config.train.micro_batches={config.train.micro_batches}")
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"config.phases: fractions sum to {total}, not 1")
    ends = phase_end_steps(config)
    for i, (start, end) in enumerate(zip([0, *ends[:-1]], ends)):
        if end <= start:
            raise ValueError(f"config.phases[{i}].fraction={phases[i]['fraction']}: gives no steps out of "
                             f"config.train.num_steps={config.train.num_steps}")


def _validate_packing(config) -> None:
    d = config.data
    if not d.packing:
        for key in ("packing_rows", "packing_row_length"):
            if d[key]:
                raise ValueError(f"config.data.{key}={d[key]}: only with config.data.packing=True")
        return
    if config.data.source == "synthetic":
        raise ValueError("config.data.packing: data.source='synthetic' makes every instance full-length, with no "
                         "padding to pack away; use text or TFRecords")
    if d.packing_max_instances < 1:
        raise ValueError(f"config.data.packing_max_instances={d.packing_max_instances}: must be at least 1")
    if d.packing_rows < 0:
        raise ValueError(f"config.data.packing_rows={d.packing_rows}: must be >= 0 (0: from the first batch)")
    if d.packing_row_length > config.model.max_position_embeddings:
        raise ValueError(f"config.data.packing_row_length={d.packing_row_length}: beyond "
                         f"config.model.max_position_embeddings={config.model.max_position_embeddings}")
    for i, phase in enumerate(config.phases):
        if d.packing_row_length and d.packing_row_length < phase["seq_length"]:
            raise ValueError(f"config.data.packing_row_length={d.packing_row_length}: shorter than "
                             f"config.phases[{i}].seq_length={phase['seq_length']}; a row must hold a whole instance")
        if d.packing_rows > phase["batch_size"]:
            raise ValueError(f"config.data.packing_rows={d.packing_rows}: more rows than config.phases[{i}]."
                             f"batch_size={phase['batch_size']} instances")
        if d.packing_rows and d.packing_rows % config.train.micro_batches:
            raise ValueError(f"config.data.packing_rows={d.packing_rows}: not divisible by "
                             f"config.train.micro_batches={config.train.micro_batches}")


def _get(config, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def phase_end_steps(config) -> list[int]:
    """The step at which each phase ends (exclusive); the last is train.num_steps."""
    ends, cumulative = [], 0.0
    for phase in config.phases:
        cumulative += phase["fraction"]
        ends.append(int(round(cumulative * config.train.num_steps)))
    ends[-1] = config.train.num_steps
    return ends


def check_against_mesh(config, mesh) -> None:
    """Every global batch must split evenly over the data-parallel devices and the micro-batches."""
    dp = sharding.data_parallel_size(mesh)
    for i, phase in enumerate(config.phases):
        per_device = phase["batch_size"] // config.train.micro_batches
        if phase["batch_size"] % config.train.micro_batches or per_device % dp:
            raise ValueError(
                f"config.phases[{i}].batch_size={phase['batch_size']}: with "
                f"train.micro_batches={config.train.micro_batches} each micro-batch of {per_device} rows must "
                f"divide over the {dp} data-parallel devices (mesh data x fsdp)")


# Settings the checkpoints depend on: they fix the parameter shapes (size, vocabulary: the file, the trained
# built-in one, or the init checkpoint's), the parameter layout (scan_layers) or the optimizer state's structure.
# A restart that changes one of them is refused (bert_jax/workdir.py); the others may change between restarts.
CHECKPOINT_KEYS = ("model.size", "model.vocab_size", "model.max_position_embeddings", "model.scan_layers",
                   "data.vocab_file", "data.builtin_vocab_size", "train.init_checkpoint", "optimizer.name")
PATH_KEYS = ("data.vocab_file", "train.init_checkpoint")


def prepare_workdir(workdir: str) -> str:
    """The absolute workdir, created and writable (bert_jax.workdir.create; no lock: also for readers)."""
    return workdirs.create(workdir)


def prepare_run_workdir(config, workdir: str) -> str:
    """The workdir of a run: created, locked (one run at a time), and config checked against its config.json."""
    return workdirs.prepare(workdir, config, incompatible=CHECKPOINT_KEYS, path_keys=PATH_KEYS,
                            defaults=default_config().to_dict(), what="model and optimizer")


# ----------------------------------------------------------------------------------------------------
# 2. Tokenizer and text
# ----------------------------------------------------------------------------------------------------


def prepare_text(config, workdir: str) -> tuple[Optional[Any], list[str], list[str]]:
    """(tokenizer, training files, held-out files) for the configured data source."""
    from bert_jax.tokenizer import load_tokenizer

    data = config.data
    if data.source == "synthetic":
        return None, [], []
    if data.source == "builtin":
        train_files, eval_files = builtin_text(config, workdir)
    else:
        # Empty when every phase names its own files (config.phases[i].input_files).
        train_files = resolve_input_files(data.input_files) if data.input_files else []
        eval_files = resolve_input_files(data.eval_input_files) if data.eval_input_files else []
    if data.vocab_file:
        tokenizer = load_tokenizer(data.vocab_file, lower_case=data.lower_case)
    elif config.train.init_checkpoint:
        tokenizer = load_tokenizer(config.train.init_checkpoint)
    else:  # builtin without a vocabulary: train one on the corpus (once; a resumed run reuses it)
        tokenizer = builtin_vocab(train_files, os.path.join(workdir, "vocab"), data.builtin_vocab_size, data.lower_case)
    return tokenizer, train_files, eval_files


def builtin_text(config, workdir: str) -> tuple[list[str], list[str]]:
    """CPython's documentation as a corpus (bert_jax/data/builtin_corpus.py); one file is held out.

    Process 0 writes it (once: a resumed run finds it complete); the others then read its manifest. The input
    pipeline reads local files, so a run whose workdir is in a bucket keeps the corpus in a local directory of each
    host instead (bert_jax.paths.local_mirror; the corpus is deterministic, so every host writes the same)."""
    directory = paths.local_mirror(workdir, "corpus") if paths.is_remote(workdir) else os.path.join(workdir, "corpus")

    def write():
        return builtin_corpus.write_corpus(directory,
                                           max_documents=config.data.builtin_max_documents or None, num_files=10)

    if jax.process_index() == 0:
        files = write()
    _sync("builtin corpus")
    if jax.process_index() != 0:
        files = write()
    return files[:-1], files[-1:]


def builtin_vocab(files: Sequence[str], directory: str, vocab_size: int, lower_case: bool = True):
    """The vocabulary in `directory` (the workdir's vocab/), trained by process 0 if it is not there yet.

    The tokenizer code reads and writes local files: for a directory in a bucket it trains into a local directory
    and uploads the result, and every process reads a downloaded copy."""
    from bert_jax.tokenizer import load_tokenizer

    remote = paths.is_remote(directory)
    if not paths.exists(os.path.join(directory, "vocab.txt")) and jax.process_index() == 0:
        from bert_jax.tokenizer_training import train_tokenizer

        console.announce(f"training a {vocab_size}-piece WordPiece vocabulary on {len(files)} files")
        local = paths.local_mirror(directory, "trained") if remote else directory
        train_tokenizer(list(files), local, kind="wordpiece", vocab_size=vocab_size, lower_case=lower_case)
        if remote:
            paths.upload_dir(local, directory)
    _sync("builtin vocabulary")
    return load_tokenizer(paths.download_dir(directory))


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# ----------------------------------------------------------------------------------------------------
# 3. Model config: the one place a ConfigDict becomes a BertConfig
# ----------------------------------------------------------------------------------------------------


def model_config(config, tokenizer=None) -> BertConfig:
    """The frozen BertConfig for this run; checks it against the tokenizer and any init checkpoint."""
    m = config.model
    vocab_size = m.vocab_size or (tokenizer.vocab_size if tokenizer is not None else 0)
    if tokenizer is not None and vocab_size < tokenizer.vocab_size:
        raise ValueError(f"config.model.vocab_size={m.vocab_size}: smaller than the tokenizer's vocabulary "
                         f"({tokenizer.vocab_size} tokens); use 0 to take the tokenizer's size")
    try:
        bert = BertConfig.from_size(
            m.size, vocab_size=vocab_size, max_position_embeddings=m.max_position_embeddings,
            hidden_dropout_rate=m.hidden_dropout_rate, attention_dropout_rate=m.attention_dropout_rate,
            gelu=m.gelu, dtype=m.dtype, attention_impl=m.attention_impl, scan_layers=m.scan_layers,
            remat_policy=m.remat_policy)
    except ValueError as e:  # BertConfig names its field, which is the config key under model.
        raise ValueError(f"config.model: {e}") from None
    if config.train.init_checkpoint:
        from bert_jax.pretrained import load_config

        given = load_config(config.train.init_checkpoint)
        for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                      "max_position_embeddings", "type_vocab_size"):
            if getattr(given, field) != getattr(bert, field):
                raise ValueError(
                    f"config.train.init_checkpoint={config.train.init_checkpoint}: its {field}="
                    f"{getattr(given, field)} differs from this config's {getattr(bert, field)} "
                    f"(config.model.size={m.size!r}, config.model.vocab_size={m.vocab_size})")
    return bert


# ----------------------------------------------------------------------------------------------------
# 4. The objective: MLM + NSP (SPEC §2)
# ----------------------------------------------------------------------------------------------------


class PretrainingObjective:
    """MLM loss = sum(w * CE) / (sum(w) + 1e-5) on the masked positions; NSP = mean CE; total = MLM + NSP.

    Normalised by whole-batch counts (see trainer.Objective), so micro-batches add up exactly.
    """

    def __init__(self, config: BertConfig):
        self.config = config
        self.model = BertForPreTraining(config)

    def init_params(self, rng):
        return self.model.init(rng, **dummy_inputs())["params"]

    def normalizers(self, batch):
        weights = batch["masked_lm_weights"].astype(jnp.float32).sum()
        # Instances: one per row, or (packed rows, bert_jax/data/packing.py) the real NSP slots of the batch.
        instances = (batch["nsp_weights"].astype(jnp.float32).sum() if "nsp_weights" in batch
                     else jnp.float32(batch["input_ids"].shape[0]))
        return {"mlm": weights + 1e-5, "mlm_count": jnp.maximum(weights, 1.0), "nsp": instances}

    def loss(self, params, batch, rng, normalizers, train: bool):
        packed = {k: batch[k] for k in ("instance_ids", "position_ids", "cls_positions") if k in batch}
        out = self.model.apply({"params": params}, batch["input_ids"], batch["input_mask"], batch["segment_ids"],
                               batch["masked_lm_positions"], deterministic=not train, rngs={"dropout": rng},
                               **packed)
        weights = batch["masked_lm_weights"].astype(jnp.float32)  # [B, P]
        mlm_logp = jax.nn.log_softmax(out["mlm_logits"].astype(jnp.float32))  # [B, P, V]
        mlm_ids = batch["masked_lm_ids"].astype(jnp.int32)
        mlm_ce = -jnp.take_along_axis(mlm_logp, mlm_ids[..., None], axis=-1)[..., 0]  # [B, P]
        # NSP per instance: [B, 2] logits, or [B, K, 2] for packed rows (empty slots have nsp_weight 0).
        nsp_logp = jax.nn.log_softmax(out["nsp_logits"].astype(jnp.float32)).reshape(-1, 2)  # [I, 2]
        nsp_labels = batch["next_sentence_labels"].astype(jnp.int32).reshape(-1)  # [I]
        nsp_weights = (batch["nsp_weights"].astype(jnp.float32).reshape(-1) if "nsp_weights" in batch
                       else jnp.ones_like(nsp_labels, jnp.float32))
        nsp_ce = -jnp.take_along_axis(nsp_logp, nsp_labels[:, None], axis=-1)[:, 0]  # [I]
        mlm_loss = jnp.sum(weights * mlm_ce) / normalizers["mlm"]
        nsp_loss = jnp.sum(nsp_weights * nsp_ce) / normalizers["nsp"]
        metrics = {
            "mlm_loss": mlm_loss,
            "nsp_loss": nsp_loss,
            "mlm_accuracy": jnp.sum(weights * (jnp.argmax(mlm_logp, -1) == mlm_ids)) / normalizers["mlm_count"],
            "nsp_accuracy": jnp.sum(nsp_weights * (jnp.argmax(nsp_logp, -1) == nsp_labels)) / normalizers["nsp"],
        }
        return mlm_loss + nsp_loss, metrics


# ----------------------------------------------------------------------------------------------------
# 5. Input: per-phase pipelines
# ----------------------------------------------------------------------------------------------------


def make_input(config, phase: Mapping, *, tokenizer, files: Sequence[str], mesh, seed: int, train: bool,
               continue_from: Optional[dict] = None, input_format: Optional[str] = None):
    """This process's batches of one phase: an iterator of dicts of numpy arrays (FEATURES) with
    get_state/set_state. `files` are text (the streaming pipeline makes and masks instances) or TFRecords
    (bert_jax/data/tfrecord_input.py), as `input_format` says ('text' | 'tfrecord'; None: found from their content,
    or as config.data.format forces); both give the same keys, dtypes and shapes. `continue_from`, the previous
    phase's final input state, makes the new phase go on where that one stopped (at the new length) instead of
    starting the corpus over; a phase reading other files (TFRecords at another length) starts at their start."""
    rows = sharding.process_rows(mesh, phase["batch_size"])
    if config.data.source == "synthetic":
        data = SyntheticPretrainingData(phase["batch_size"], phase["seq_length"], phase["max_predictions"],
                                        config.model.vocab_size, seed=seed, rows=rows)
        if continue_from is not None:
            data.set_state(continue_from)
        return data
    if input_format is None:
        input_format, files = tfrecord_input.input_format(files, config.data.format)
    d = config.data
    if input_format == "tfrecord":
        data = tfrecord_input.make_iterator(
            files, batch_size=rows.stop - rows.start, seq_length=phase["seq_length"],
            max_predictions=phase["max_predictions"], seed=seed, process_index=jax.process_index(),
            process_count=jax.process_count(), shuffle=train)
    else:
        data = PretrainingIterator(PipelineSpec(
            input_pattern=tuple(files), mode="streaming", batch_size=rows.stop - rows.start,
            max_seq_length=phase["seq_length"], max_predictions_per_seq=phase["max_predictions"],
            masked_lm_prob=d.masked_lm_prob, short_seq_prob=d.short_seq_prob, whole_word_masking=d.whole_word_masking,
            dynamic_masking=d.dynamic_masking, dupe_factor=d.dupe_factor, seed=seed,
            process_index=jax.process_index(), process_count=jax.process_count(), repeat=True, shuffle=train),
            tokenizer=tokenizer)
    if train and d.packing:
        data = packed(config, phase, data, mesh)
    # A position is only meaningful on the stream it was taken on (same files, seed and shard).
    if continue_from is not None and continue_from.get("fingerprint") == data.spec.fingerprint():
        data.set_state(continue_from, allow_shape_change=True)
    return data


def packed(config, phase: Mapping, instances, mesh):
    """The phase's instances packed into rows (bert_jax/data/packing.py); the batch still counts instances."""
    d = config.data
    return packing.PackedBatches(
        instances, batch_size=phase["batch_size"], row_length=d.packing_row_length or phase["seq_length"],
        max_instances=d.packing_max_instances,
        max_predictions=packing.default_max_predictions(phase["max_predictions"], d.packing_max_instances),
        rows=d.packing_rows, row_multiple=sharding.data_parallel_size(mesh) * config.train.micro_batches,
        process_count=jax.process_count())


def make_phases(config, bert: BertConfig, *, tokenizer, files, mesh, inputs=None) -> list[trainer.Phase]:
    """The trainer's phases. `inputs` (pretrain_input.plan_inputs) gives each phase its files and their kind
    and collects the iterators for the reader report; without it every phase reads `files`."""
    phases = []
    for i, (phase, end) in enumerate(zip(config.phases, phase_end_steps(config))):
        source = inputs.phases[i] if inputs is not None and inputs.phases else None

        def make_iterator(continue_from=None, phase=phase, source=source):
            data = make_input(config, phase, tokenizer=tokenizer, files=source.files if source else files, mesh=mesh,
                              seed=config.data.seed, train=True, continue_from=continue_from,
                              input_format=source.format if source else None)
            return inputs.track(data, source) if source else data

        phases.append(trainer.Phase(
            name=f"seq{phase['seq_length']}", end_step=end, global_batch_size=phase["batch_size"],
            make_iterator=make_iterator,
            # Packed rows carry a varying number of instances: no per-instance token or FLOP count holds.
            tokens_per_sequence=0 if config.data.packing else phase["seq_length"],
            flops_per_sequence=0.0 if config.data.packing else flops_per_sequence(bert, phase["seq_length"],
                                                                                  phase["max_predictions"])))
    return phases


def make_evaluate(config, eval_step, *, tokenizer, files, mesh, inputs=None):
    """state -> mean metrics over the same held-out batches every time; None without held-out data.
    `inputs` as for make_phases (held-out TFRecords must be at the first phase's length)."""
    if config.data.source != "synthetic" and not files:
        return None
    phase = config.phases[0]
    source = inputs.evaluation if inputs is not None else None

    def evaluate(state):
        batches = make_input(config, phase, tokenizer=tokenizer, files=source.files if source else files, mesh=mesh,
                             seed=config.data.seed + 1000, train=False, input_format=source.format if source else None)
        if source:
            inputs.track(batches, source)
        totals = []
        for _ in range(config.train.eval_batches):
            local = next(batches)
            totals.append(eval_step(state.params, sharding.global_batch(local, mesh, phase["batch_size"])))
        totals = jax.device_get(totals)
        return {k: float(np.mean([t[k] for t in totals])) for k in totals[0]}

    return evaluate


# ----------------------------------------------------------------------------------------------------
# 6. Export: a bert_jax model directory
# ----------------------------------------------------------------------------------------------------


def host_params(params) -> Any:
    """The full parameters as numpy on every process (a collective when arrays span hosts)."""
    if all(x.is_fully_addressable for x in jax.tree.leaves(params)):
        return jax.device_get(params)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(params, tiled=True)


def export_model(directory: str, bert: BertConfig, params, tokenizer, step: int) -> dict:
    """Writes (or replaces: atomically on a local disk, manifest last in a bucket, see paths.publish_dir) a
    bert_jax model directory with the current weights; returns the host copy of the parameters (canonical layout)."""
    from bert_jax.model import is_scanned, unscan_params
    from bert_jax.pretrained import MANIFEST_FILE, save_pretrained

    params = host_params(params)
    if is_scanned(params):
        params = unscan_params(params)
    staging = f"{directory}.tmp-{step}"
    if jax.process_index() == 0 and paths.exists(staging):
        paths.rmtree(staging)
    _sync("export staging")
    # Every process calls save_pretrained: its Orbax save synchronises them (process 0 writes the arrays).
    save_pretrained(staging, bert, params, tokenizer, source={"format": "bert_jax", "pretrained_steps": step})
    _sync("export written")
    if jax.process_index() == 0:
        paths.publish_dir(staging, directory, last=MANIFEST_FILE)
        console.announce(f"exported the model at step {step} to {directory}")
    _sync("export done")
    return params


# ----------------------------------------------------------------------------------------------------
# 7. The run
# ----------------------------------------------------------------------------------------------------


@workdirs.releases_locks
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       hooks: Sequence = (), devices: Optional[Sequence] = None) -> trainer.TrainState:
    """Pretrains per `config` in `workdir`, resuming from its latest checkpoint if there is one.

    `hooks` are called as hook(step, state) after every step (tests use them); `devices` restricts the
    mesh to some devices (default: all). Returns the final TrainState.
    """
    config = validate_config(config)
    workdir = prepare_run_workdir(config, workdir)
    mesh = sharding.make_mesh(dict(config.mesh), devices)
    check_against_mesh(config, mesh)
    tokenizer, train_files, eval_files = prepare_text(config, workdir)
    bert = model_config(config, tokenizer)
    # Each phase's files and reader, checked against the phases before anything compiles; prints what was read.
    inputs = pretrain_input.plan_inputs(config, train_files, eval_files, bert.vocab_size)

    objective = PretrainingObjective(bert)
    tx, schedule = _optimizer(config)
    # Before the Checkpointer, which already cleans up in the workdir: a rejected run changes nothing there.
    workdirs.check_checkpoint_shapes(workdir, trainer.abstract_train_state(
        objective, tx, trainer.state_shardings(objective, tx, mesh)), what="model and optimizer")
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=config.train.checkpoint_every,
                                keep_last=config.train.keep_checkpoints, keep_every=config.train.keep_every,
                                async_save=config.train.async_checkpoints)
    state, shardings, data_state = _initial_state(config, objective, tx, mesh, checkpointer)
    # Only now: the run is accepted and its state restored. Paths absolute: finetune may read it from elsewhere.
    workdirs.write_config(workdir, config, path_keys=(*PATH_KEYS, "data.input_files", "data.eval_input_files"))

    writer = MetricsWriter(workdir, config.train.num_steps, tensorboard=config.train.tensorboard)
    inputs.write_start(writer, int(state.step))
    train_step = trainer.make_train_step(objective, tx, schedule, mesh, shardings, config.train.micro_batches)
    eval_step = trainer.make_eval_step(objective, mesh, shardings)
    model_dir = os.path.join(workdir, "model")

    def on_save(step, state):
        if config.train.export_every_checkpoint and tokenizer is not None:
            export_model(model_dir, bert, state.params, tokenizer, step)

    try:
        try:
            state = trainer.train(
                state=state, train_step=train_step, mesh=mesh, checkpointer=checkpointer, writer=writer,
                phases=make_phases(config, bert, tokenizer=tokenizer, files=train_files, mesh=mesh, inputs=inputs),
                data_state=data_state, log_every=config.train.log_every, eval_every=config.train.eval_every,
                evaluate=make_evaluate(config, eval_step, tokenizer=tokenizer, files=eval_files, mesh=mesh,
                                       inputs=inputs),
                peak_flops_per_device=peak_flops_per_device(mesh.devices.flat[0], config.train.peak_flops_per_device),
                hooks=hooks, on_save=on_save)
        except trainer.Preempted as stop:
            inputs.finish(writer, stop.step)  # the reader report also when SIGTERM stops the run
            raise
        inputs.finish(writer, int(state.step))
        if int(state.step) == config.train.num_steps and tokenizer is not None:
            params = export_model(model_dir, bert, state.params, tokenizer, int(state.step))
            _show_fill_mask(config, writer, Pretrained(bert.replace(scan_layers=False), params, tokenizer),
                            model_dir, int(state.step))
    finally:
        checkpointer.close()
        writer.close()
    return state


def load_train_state(config: ml_collections.ConfigDict, workdir: str, *, step: Optional[int] = None,
                     devices: Optional[Sequence] = None) -> trainer.TrainState:
    """A checkpoint of `workdir` (default: the latest) restored onto this config's mesh over `devices`,
    whatever mesh it was written on (for notebooks, evaluation, or moving a run to other hardware)."""
    config = validate_config(config)
    mesh = sharding.make_mesh(dict(config.mesh), devices)
    tokenizer = None
    if config.data.source != "synthetic" and not config.model.vocab_size:
        tokenizer, _, _ = prepare_text(config, prepare_workdir(workdir))
    objective = PretrainingObjective(model_config(config, tokenizer))
    tx, _ = _optimizer(config)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=config.train.checkpoint_every)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{checkpointer.directory}: no checkpoint")
        shardings = trainer.state_shardings(objective, tx, mesh)
        state, _ = checkpointer.restore(step, trainer.abstract_train_state(objective, tx, shardings))
    finally:
        checkpointer.close()
    return state


def _optimizer(config):
    o = config.optimizer
    return optim.make_optimizer(o.name, learning_rate=o.learning_rate, warmup_steps=o.warmup_steps,
                                total_steps=config.train.num_steps, weight_decay=o.weight_decay, b1=o.b1, b2=o.b2,
                                eps=o.eps, clip_norm=o.clip_norm)


def _initial_state(config, objective, tx, mesh, checkpointer):
    """Resume from the workdir's latest checkpoint, else start from init_checkpoint or from scratch."""
    resumed = trainer.resume(objective, tx, mesh, checkpointer, console.announce, what="model and optimizer")
    if resumed is not None:
        return resumed
    params = None
    if config.train.init_checkpoint:
        from bert_jax.pretrained import load_pretrained

        params = load_pretrained(config.train.init_checkpoint,
                                 config_overrides={"scan_layers": config.model.scan_layers}).params
        console.announce(f"initialising the weights from {config.train.init_checkpoint}")
    state, shardings = trainer.create_train_state(objective, tx, mesh, config.train.seed, params=params)
    return state, shardings, None


def _show_fill_mask(config, writer, pretrained, model_dir: str, step: int) -> None:
    if not config.fill_mask_examples or jax.process_index() != 0:
        return
    from bert_jax.inference import fill_mask

    lines = [f"fill-mask with the model in {model_dir}:"]
    for text, predictions in zip(config.fill_mask_examples, fill_mask(pretrained, list(config.fill_mask_examples))):
        if predictions and isinstance(predictions[0], list):  # several [MASK]s: show the first
            predictions = predictions[0]
        guesses = ", ".join(f"{p['token_str']} ({p['score']:.2f})" for p in predictions)
        lines.append(f"  {text}\n    -> {guesses}")
    print("\n".join(lines), flush=True)
    writer.write_text(step, "fill_mask", "\n".join(lines))
