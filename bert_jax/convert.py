"""Checkpoint interop: Google's original TF checkpoints and Hugging Face BERT <-> bert_jax parameters.

A bert_jax parameter path is the original TF variable name with LayerNorm gamma/beta renamed scale/bias, so every
tensor maps one to one (kernels are [in, out] like TF; torch Linear weights are [out, in]):

    bert_jax path                               Google TF checkpoint                 Hugging Face state dict
    bert/embeddings/word_embeddings             same                                 bert.embeddings.word_embeddings.weight
    bert/encoder/layer_3/attention/self/        same                                 bert.encoder.layer.3.attention.self.
        query/kernel [H, H]                                                              query.weight (transposed)
    .../LayerNorm/{scale, bias}                 .../LayerNorm/{gamma, beta}          .../LayerNorm.{weight, bias}
    cls/predictions/output_bias [V]             same                                 cls.predictions.bias (decoder tied)
    cls/seq_relationship/output_weights [2, H]  same                                 cls.seq_relationship.weight [2, H]
    classifier/{kernel [H, n], bias}            output_{weights [n, H], bias}        classifier.{weight [n, H], bias}
    qa_outputs/{kernel [H, 2], bias}            cls/squad/output_{weights, bias}     qa_outputs.{weight [2, H], bias}

A checkpoint holds some of these *parts*: the encoder (always), the pooler, the MLM head, the NSP head, and a
fine-tuning head. `import_*` returns the parts it found; `fill_missing_parts` initialises the others fresh
(model.py init) so the tree runs in BertForPreTraining; `params_from_*` do both and log what was initialised.

`convert_checkpoint` turns a source directory into a bert_jax model directory (see bert_jax/pretrained.py) and
`export_hf` writes one back as a Hugging Face directory. Neither needs transformers; torch only to read a
pytorch_model.bin.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

import numpy as np

from bert_jax.heads import KINDS
from bert_jax.model import BertConfig

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------

# Hugging Face `hidden_act` -> our `gelu`. gelu_new, gelu_fast and gelu_pytorch_tanh are the same tanh formula.
HF_ACTIVATIONS = {"gelu": "erf", "gelu_python": "erf", "gelu_new": "tanh", "gelu_fast": "tanh",
                  "gelu_pytorch_tanh": "tanh"}


def config_from_hf(d: Mapping, source: str = "config.json") -> BertConfig:
    """A BertConfig from a Hugging Face config.json or Google's bert_config.json (same key names)."""

    def get(key, default=None, required=True):
        if key in d and d[key] is not None:
            return d[key]
        if required:
            raise ValueError(f"{source}: missing key {key!r}")
        return default

    model_type = d.get("model_type", "bert")
    if model_type != "bert":
        raise ValueError(f"{source}: model_type={model_type!r}; only 'bert' checkpoints can be imported")
    position_type = d.get("position_embedding_type") or "absolute"
    if position_type != "absolute":
        raise ValueError(f"{source}: position_embedding_type={position_type!r} is not supported; "
                         "bert_jax has learned absolute position embeddings only")
    for key in ("is_decoder", "add_cross_attention"):
        if d.get(key):
            raise ValueError(f"{source}: {key}=true is not supported; bert_jax is an encoder only")
    act = get("hidden_act")
    if act not in HF_ACTIVATIONS:
        raise ValueError(f"{source}: hidden_act={act!r} is not supported; use one of {sorted(HF_ACTIVATIONS)}")
    try:
        return BertConfig(
            vocab_size=get("vocab_size"),
            hidden_size=get("hidden_size"),
            num_layers=get("num_hidden_layers"),
            num_heads=get("num_attention_heads"),
            intermediate_size=get("intermediate_size"),
            max_position_embeddings=get("max_position_embeddings"),
            type_vocab_size=get("type_vocab_size"),
            hidden_dropout_rate=float(get("hidden_dropout_prob", 0.1, required=False)),
            attention_dropout_rate=float(get("attention_probs_dropout_prob", 0.1, required=False)),
            layer_norm_eps=float(get("layer_norm_eps", 1e-12, required=False)),
            initializer_range=float(get("initializer_range", 0.02, required=False)),
            gelu=HF_ACTIVATIONS[act],
        )
    except ValueError as e:  # BertConfig names the field; say which file it came from
        raise ValueError(f"{source}: {e}") from None


def config_to_hf(config: BertConfig) -> dict:
    """The model keys of a Hugging Face BertConfig (usable as `transformers.BertConfig(**config_to_hf(c))`)."""
    return dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        hidden_act="gelu" if config.gelu == "erf" else "gelu_new",
        hidden_dropout_prob=config.hidden_dropout_rate,
        attention_probs_dropout_prob=config.attention_dropout_rate,
        max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size,
        initializer_range=config.initializer_range,
        layer_norm_eps=config.layer_norm_eps,
    )


# ----------------------------------------------------------------------------------------------------
# Parts and names
# ----------------------------------------------------------------------------------------------------

# What a checkpoint may hold. encoder = embeddings + layers; the rest are optional.
PARTS = ("encoder", "pooler", "mlm", "nsp", "classifier", "qa_outputs")
FINETUNING_HEADS = tuple(dict.fromkeys(kind.head for kind in KINDS.values()))  # classifier, qa_outputs
# Parts BertForPreTraining needs; missing ones are initialised fresh.
PRETRAINING_PARTS = ("encoder", "pooler", "mlm", "nsp")


def part_of(path: tuple) -> str:
    if path[0] == "bert":
        return "pooler" if path[1] == "pooler" else "encoder"
    if path[:2] == ("cls", "predictions"):
        return "mlm"
    if path[:2] == ("cls", "seq_relationship"):
        return "nsp"
    if path[0] in FINETUNING_HEADS:
        return path[0]
    raise ValueError(f"parameter {'/'.join(path)} belongs to no known part")


def hf_name(path: tuple) -> tuple[str, bool]:
    """bert_jax path -> (Hugging Face state-dict key, whether the tensor is transposed)."""
    special = {("cls", "predictions", "output_bias"): "cls.predictions.bias",
               ("cls", "seq_relationship", "output_weights"): "cls.seq_relationship.weight",
               ("cls", "seq_relationship", "output_bias"): "cls.seq_relationship.bias"}
    if path in special:
        return special[path], False
    *parents, leaf = path
    parents = [re.sub(r"^layer_(\d+)$", r"layer.\1", p) for p in parents]
    if leaf == "kernel":
        return ".".join([*parents, "weight"]), True
    if leaf == "scale":
        return ".".join([*parents, "weight"]), False
    if leaf == "bias":
        return ".".join([*parents, "bias"]), False
    return ".".join([*parents, leaf, "weight"]), False  # embedding tables


def tf_name(path: tuple) -> tuple[str, bool]:
    """bert_jax path -> (Google TF variable name, whether the tensor is transposed)."""
    if path[0] == "classifier":  # run_classifier.py's unscoped output layer, weights [n, H]
        return ("output_weights", True) if path[1] == "kernel" else ("output_bias", False)
    if path[0] == "qa_outputs":  # run_squad.py, weights [2, H]
        return ("cls/squad/output_weights", True) if path[1] == "kernel" else ("cls/squad/output_bias", False)
    if path[-2] == "LayerNorm":
        path = (*path[:-1], {"scale": "gamma", "bias": "beta"}[path[-1]])
    return "/".join(path), False


def pretraining_shapes(config: BertConfig) -> dict:
    """{path: shape} of every BertForPreTraining parameter, from jax.eval_shape (nothing allocated)."""
    return dict(_pretraining_shapes(config.replace(scan_layers=False)))


@functools.lru_cache(maxsize=16)
def _pretraining_shapes(config: BertConfig) -> tuple:
    import flax.linen as nn
    import jax

    from bert_jax.model import BertForPreTraining, abstract_params

    tree = nn.meta.unbox(abstract_params(BertForPreTraining(config)))
    return tuple((tuple(k.key for k in path), tuple(x.shape))
                 for path, x in jax.tree_util.tree_flatten_with_path(tree)[0])


def head_shapes(config: BertConfig, head: str, num_outputs: int) -> dict:
    return {(head, "kernel"): (config.hidden_size, num_outputs), (head, "bias"): (num_outputs,)}


def flatten(params: Mapping, prefix: tuple = ()) -> dict:
    """Nested dict -> {path tuple: leaf}."""
    out = {}
    for k, v in params.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def unflatten(flat: Mapping) -> dict:
    out: dict = {}
    for path, v in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return out


def parts_of(params: Mapping) -> list:
    """The parts a parameter tree holds, in PARTS order."""
    found = {part_of(path) for path in flatten(params)}
    return [p for p in PARTS if p in found]


def _dimension_fields(path: tuple) -> tuple:
    """The BertConfig field behind each dimension of a parameter (None: fixed, or set by the checkpoint)."""
    leaf = path[-1]
    tables = {"word_embeddings": "vocab_size", "position_embeddings": "max_position_embeddings",
              "token_type_embeddings": "type_vocab_size"}
    if leaf in tables:
        return tables[leaf], "hidden_size"
    if path[:2] == ("cls", "predictions") and leaf == "output_bias":
        return ("vocab_size",)
    if path[:2] == ("cls", "seq_relationship") or path[0] in FINETUNING_HEADS:
        return {"output_weights": (None, "hidden_size"), "kernel": ("hidden_size", None)}.get(leaf, (None,))
    if "intermediate" in path:
        return ("hidden_size", "intermediate_size") if leaf == "kernel" else ("intermediate_size",)
    if path[-3:-1] == ("output", "dense") and "attention" not in path:  # the FFN's second dense
        return ("intermediate_size", "hidden_size") if leaf == "kernel" else ("hidden_size",)
    return ("hidden_size",) * (2 if leaf == "kernel" else 1)


def describe_shape_mismatch(config: BertConfig, path: tuple, expected: tuple, actual: tuple) -> str:
    """One line naming the tensor, both shapes, and the config fields behind the dimensions that differ."""
    fields = []
    if len(expected) == len(actual):
        for field, e, a in zip(_dimension_fields(path), expected, actual):
            if field and e != a and f"{field}={e}" not in fields:
                fields.append(f"{field}={e}")
    because = f" (from {', '.join(fields)})" if fields else ""
    return f"{'/'.join(path)}: expected shape {tuple(expected)}{because}, found {tuple(actual)}"


def _most_telling_first(paths):
    """Word embeddings first: their shape shows both a vocab and a hidden size mismatch."""
    return sorted(paths, key=lambda p: p[-1] != "word_embeddings")


def check_params(params: Mapping, config: BertConfig, where: str = "params") -> list:
    """Assert a canonical (unscanned) tree fits `config`: encoder and pooler present, every tensor of the parts it
    holds present with the config's shape, nothing unknown. Returns the parts; raises ValueError naming tensors."""
    flat = flatten(params)
    layers = _layer_count("/".join(path) + "/" for path in flat)
    if layers != config.num_layers:
        raise ValueError(f"{where}: the config says num_layers={config.num_layers} but the weights have "
                         f"{layers or 0} encoder layers")
    expected = pretraining_shapes(config)
    for head in FINETUNING_HEADS:
        if (head, "bias") in flat:
            expected.update(head_shapes(config, head, np.shape(flat[(head, "bias")])[0]))
    unknown = sorted("/".join(p) for p in flat if p not in expected)
    present = {part_of(p) for p in flat if p in expected} | {"encoder", "pooler"}
    missing = [p for p in expected if part_of(p) in present and p not in flat]
    mismatched = [describe_shape_mismatch(config, p, expected[p], np.shape(flat[p]))
                  for p in _most_telling_first(expected) if p in flat and tuple(np.shape(flat[p])) != expected[p]]
    problems = []
    if mismatched:
        problems.append("; ".join(mismatched[:8]) + (f" (and {len(mismatched) - 8} more)" if len(mismatched) > 8 else ""))
    if missing:
        problems.append("missing tensors: " + ", ".join("/".join(p) for p in missing[:12]))
    if unknown:
        problems.append("unexpected tensors: " + ", ".join(unknown[:12]))
    if problems:
        raise ValueError(f"{where}: weights do not fit the config: " + "; ".join(problems))
    return [p for p in PARTS if p in present]


# ----------------------------------------------------------------------------------------------------
# Import
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Imported:
    params: dict  # nested dict of float32 numpy arrays, only the parts found
    parts: list  # parts found in the source, in PARTS order
    skipped: list  # source tensors deliberately ignored (optimizer slots, buffers, tied copies)
    source: str  # what was read, for messages


@dataclasses.dataclass
class _Source:
    """A named collection of tensors: shapes known up front, values read on demand (TF reads lazily)."""

    shapes: dict  # name -> shape
    read: Callable  # name -> np.ndarray
    description: str


def _import(source: _Source, config: BertConfig, name_of: Callable, skipped: list) -> Imported:
    """Map every tensor of `source` onto a bert_jax path, asserting shapes; nothing left over, nothing missing."""
    expected = pretraining_shapes(config)
    for head in FINETUNING_HEADS:  # the head width (num_labels) comes from the source's bias
        bias_name, _ = name_of((head, "bias"))
        if bias_name in source.shapes and len(source.shapes[bias_name]) == 1:
            expected.update(head_shapes(config, head, source.shapes[bias_name][0]))

    names = {path: name_of(path) for path in expected}
    present = {part_of(path) for path, (name, _) in names.items() if name in source.shapes}
    if "encoder" not in present:
        some = ", ".join(sorted(source.shapes)[:5]) or "(no tensors)"
        raise ValueError(f"{source.description}: no BERT encoder tensors found (looked for names like "
                         f"{names[('bert', 'embeddings', 'word_embeddings')][0]!r}); it holds: {some} ...")

    layers = _layer_count(source.shapes)
    if layers is not None and layers != config.num_layers:
        raise ValueError(f"{source.description}: the config says num_layers={config.num_layers} but the checkpoint "
                         f"has {layers} encoder layers")

    # Check every name and shape before reading anything (a large TF checkpoint reads slowly).
    plan, missing, mismatched = [], [], []
    for path in _most_telling_first(expected):
        if part_of(path) not in present:
            continue
        name, transpose = names[path]
        if name not in source.shapes:
            missing.append(name)
            continue
        stored = tuple(source.shapes[name])
        ours = stored[::-1] if transpose else stored
        if ours != tuple(expected[path]):
            mismatched.append(describe_shape_mismatch(config, path, expected[path], ours) + f" [{name}]")
            continue
        plan.append((path, name, transpose))
    known_names = {name for name, _ in names.values()}
    unexpected = sorted(set(source.shapes) - known_names)
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} tensors do not fit the config: " + "; ".join(mismatched[:8]))
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:12])}" + (" ..." if len(missing) > 12 else ""))
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:12])}" + (" ..." if len(unexpected) > 12 else ""))
    if problems:
        raise ValueError(f"{source.description}: " + "; ".join(problems))

    flat = {}
    for path, name, transpose in plan:
        value = np.asarray(source.read(name), dtype=np.float32)
        flat[path] = np.ascontiguousarray(value.T) if transpose else value
    parts = [p for p in PARTS if p in present]
    return Imported(unflatten(flat), parts, skipped, source.description)


def _layer_count(names: Iterable[str]) -> Optional[int]:
    """Number of encoder layers a set of HF or TF names holds (layer.N / layer_N), None if none."""
    found = {int(m.group(1)) for n in names if (m := re.search(r"encoder[./]layer[._](\d+)[./]", n))}
    return max(found) + 1 if found else None


def _normalise_hf_keys(state_dict: Mapping) -> tuple[dict, list]:
    """Hugging Face key variants -> the BertForPreTraining spelling; returns (tensors, skipped names).

    Handles: BertModel checkpoints without the `bert.` prefix, old checkpoints with LayerNorm gamma/beta,
    the non-parameter buffers (position_ids, token_type_ids), and the MLM decoder tied to the word embeddings.
    """
    tensors, skipped = {}, []
    has_prefix = any(k.startswith("bert.") for k in state_dict)
    for key, value in state_dict.items():
        if key.endswith("embeddings.position_ids") or key.endswith("embeddings.token_type_ids"):
            skipped.append(key)  # buffers, not weights
            continue
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
        key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
        if not has_prefix and key.split(".")[0] in ("embeddings", "encoder", "pooler"):
            key = "bert." + key
        tensors[key] = np.asarray(value)

    word = tensors.get("bert.embeddings.word_embeddings.weight")
    decoder = tensors.pop("cls.predictions.decoder.weight", None)
    if decoder is not None:
        if word is None or decoder.shape != word.shape or not np.allclose(decoder, word, atol=1e-6):
            raise ValueError("cls.predictions.decoder.weight differs from bert.embeddings.word_embeddings.weight; "
                             "bert_jax ties the MLM decoder to the word embeddings and cannot hold an untied one")
        skipped.append("cls.predictions.decoder.weight")
    decoder_bias = tensors.pop("cls.predictions.decoder.bias", None)
    if decoder_bias is not None:
        bias = tensors.setdefault("cls.predictions.bias", decoder_bias)
        if bias.shape != decoder_bias.shape or not np.allclose(bias, decoder_bias, atol=1e-6):
            raise ValueError("cls.predictions.decoder.bias differs from cls.predictions.bias; expected them tied")
        skipped.append("cls.predictions.decoder.bias")
    return tensors, skipped


def import_hf_state_dict(state_dict: Mapping, config: BertConfig, description: str = "Hugging Face state dict"
                         ) -> Imported:
    """A Hugging Face BERT state dict (numpy or torch values; any Bert* model class) -> the parts it holds."""
    tensors, skipped = _normalise_hf_keys({k: _to_numpy(v) for k, v in state_dict.items()})
    source = _Source({k: v.shape for k, v in tensors.items()}, tensors.__getitem__, description)
    return _import(source, config, hf_name, skipped)


# Optimizer state in Google's checkpoints (run_pretraining.py / run_classifier.py saves it alongside the weights).
_TF_OPTIMIZER_VARIABLE = re.compile(r"(/adam_[mv]$)|(^global_step$)")


def import_tf_checkpoint(path: str, config: BertConfig) -> Imported:
    """A Google TF checkpoint (prefix such as .../bert_model.ckpt, or its directory) -> the parts it holds."""
    import tensorflow as tf  # heavy: only when a TF checkpoint is read

    prefix = find_tf_checkpoint(path)
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    skipped = sorted(n for n in shapes if _TF_OPTIMIZER_VARIABLE.search(n))
    weights = {n: tuple(s) for n, s in shapes.items() if n not in set(skipped)}
    return _import(_Source(weights, reader.get_tensor, f"TF checkpoint {prefix}"), config, tf_name, skipped)


def find_tf_checkpoint(path) -> str:
    """The checkpoint prefix for a prefix path or a directory holding exactly one checkpoint (or a `checkpoint`
    file naming the latest)."""
    path = Path(path)
    if Path(f"{path}.index").exists():
        return str(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no TF checkpoint (neither {path}.index nor a directory)")
    indexes = sorted(path.glob("*.index"))
    if len(indexes) == 1:
        return str(indexes[0].with_suffix(""))
    if (path / "checkpoint").exists():
        import tensorflow as tf

        latest = tf.train.latest_checkpoint(str(path))
        if latest:
            return latest
    if not indexes:
        raise FileNotFoundError(f"{path}: no TF checkpoint found (expected bert_model.ckpt.index and "
                                "bert_model.ckpt.data-*)")
    raise ValueError(f"{path}: several TF checkpoints ({', '.join(i.stem for i in indexes)}); "
                     "pass the prefix of one, e.g. --source DIR/model.ckpt-1000")


def fill_missing_parts(imported: Imported, config: BertConfig, seed: int = 0) -> tuple[dict, list]:
    """Add fresh (model.py init) parameters for the pretraining parts the source lacked: (params, fresh parts)."""
    missing = [p for p in PRETRAINING_PARTS if p not in imported.parts]
    if "encoder" in missing:
        raise ValueError(f"{imported.source}: no encoder weights to complete")
    if not missing:
        return imported.params, []
    fresh = {}
    for part, rng in zip(missing, _split_rng(seed, len(missing))):
        fresh.update(flatten(_fresh_part(part, config, rng)))
    fresh = {path: np.asarray(value, np.float32) for path, value in fresh.items()}
    return unflatten({**flatten(imported.params), **fresh}), missing


def _split_rng(seed: int, n: int):
    import jax

    return jax.random.split(jax.random.PRNGKey(seed), n)


def _fresh_part(part: str, config: BertConfig, rng) -> dict:
    """One part initialised on its own by its model.py module (small graphs: no whole-model init)."""
    import flax.linen as nn
    import jax.numpy as jnp

    from bert_jax.model import Pooler, PretrainingHeads

    hidden = jnp.zeros((1, 1, config.hidden_size), jnp.float32)  # [B, T, H] dummy activations
    if part == "pooler":
        return {"bert": {"pooler": nn.meta.unbox(Pooler(config).init(rng, hidden[:, 0])["params"])}}
    word_embeddings = jnp.zeros((config.vocab_size, config.hidden_size), jnp.float32)
    variables = PretrainingHeads(config).init(rng, hidden, hidden[:, 0], lambda x: x @ word_embeddings.T)
    heads = nn.meta.unbox(variables["params"])
    name = {"mlm": "predictions", "nsp": "seq_relationship"}[part]
    return {"cls": {name: heads[name]}}


def _complete(imported: Imported, config: BertConfig) -> dict:
    params, fresh = fill_missing_parts(imported, config)
    if fresh:
        log.warning("%s has no %s parameters: initialised fresh", imported.source, "/".join(fresh))
    return params


def params_from_hf_state_dict(state_dict: Mapping, config: BertConfig) -> dict:
    """Hugging Face state dict -> a full bert_jax tree: 'bert', 'cls' (fresh where absent) and any
    'classifier'/'qa_outputs' head. Logs a warning naming the parts initialised fresh."""
    return _complete(import_hf_state_dict(state_dict, config), config)


def params_from_tf_checkpoint(path: str, config: BertConfig) -> dict:
    """Google TF checkpoint -> a full bert_jax tree (as params_from_hf_state_dict)."""
    return _complete(import_tf_checkpoint(path, config), config)


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


# ----------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------


def hf_state_dict_from_params(params: Mapping, config: BertConfig, tied: bool = False) -> dict:
    """bert_jax tree (canonical, unscanned) -> Hugging Face state dict of float32 numpy arrays.

    Every part present is exported with its shape checked against the config. `tied=True` also writes the
    tied copies (cls.predictions.decoder.weight/bias) that torch's `load_state_dict(strict=True)` expects; the
    safetensors files Hugging Face writes leave them out.
    """
    from bert_jax.model import is_scanned

    if is_scanned(params):
        raise ValueError("params are scanned (encoder/layer); pass model.unscan_params(params)")
    check_params(params, config)
    out = {}
    for path, value in flatten(params).items():
        name, transpose = hf_name(path)
        value = np.asarray(value, np.float32)
        out[name] = np.ascontiguousarray(value.T if transpose else value)
    if tied and "cls.predictions.bias" in out:
        out["cls.predictions.decoder.weight"] = out["bert.embeddings.word_embeddings.weight"]
        out["cls.predictions.decoder.bias"] = out["cls.predictions.bias"]
    return out


# Hugging Face class for each fine-tuning task (the manifest's `task`): bert_jax/heads.py KINDS.
HF_ARCHITECTURES = {kind.hf_task: kind.hf_class for kind in KINDS.values()}


def hf_architecture(parts: Iterable[str], task: Optional[str] = None) -> str:
    parts = set(parts)
    if "qa_outputs" in parts:
        return "BertForQuestionAnswering"
    if "classifier" in parts:
        return HF_ARCHITECTURES.get(task or "", "BertForSequenceClassification")
    if "mlm" in parts:
        return "BertForPreTraining" if "nsp" in parts else "BertForMaskedLM"
    return "BertModel"


def hf_config_json(config: BertConfig, parts: Iterable[str], manifest: Mapping, pad_id: int = 0) -> dict:
    """The config.json of an exported model: model keys + architecture + labels of a classifier head."""
    out = dict(config_to_hf(config), model_type="bert", architectures=[hf_architecture(parts, manifest.get("task"))],
               position_embedding_type="absolute", pad_token_id=pad_id, tie_word_embeddings=True)
    labels = manifest.get("labels")
    if labels and "classifier" in parts:
        out["id2label"] = {str(i): label for i, label in enumerate(labels)}
        out["label2id"] = {label: i for i, label in enumerate(labels)}
    if manifest.get("task") == "regression":
        out["problem_type"] = "regression"
    return out


def export_hf(checkpoint: str, output: str) -> Path:
    """bert_jax model directory -> Hugging Face directory: config.json, model.safetensors and tokenizer files."""
    from safetensors.numpy import save_file

    from bert_jax.pretrained import load_pretrained, read_manifest

    pretrained = load_pretrained(checkpoint)
    manifest = read_manifest(checkpoint)
    output = _fresh_output_dir(output)
    parts = parts_of(pretrained.params)
    tensors = hf_state_dict_from_params(pretrained.params, pretrained.config)
    save_file(tensors, str(output / "model.safetensors"), metadata={"format": "pt"})
    hf_config = hf_config_json(pretrained.config, parts, manifest, pretrained.tokenizer.pad_id)
    (output / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
    _write_hf_tokenizer(pretrained.tokenizer, pretrained.config, output)
    log.info("exported %s (%s, %d tensors) to %s", checkpoint, hf_config["architectures"][0], len(tensors), output)
    return output


def _write_hf_tokenizer(tokenizer, config: BertConfig, output: Path) -> None:
    """vocab.txt + tokenizer_config.json + special_tokens_map.json for transformers' BertTokenizer."""
    from bert_jax.tokenizer import WordPieceTokenizer

    if not isinstance(tokenizer, WordPieceTokenizer):
        log.warning("tokenizer not exported: Hugging Face's BertTokenizer needs a WordPiece vocab.txt, this model "
                    "uses %s", type(tokenizer).__name__)
        return
    (output / "vocab.txt").write_text("".join(token + "\n" for token in tokenizer.inv_vocab), encoding="utf-8")
    specials = dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    tokenizer_config = dict(specials, tokenizer_class="BertTokenizer", do_lower_case=bool(tokenizer.lower_case),
                            do_basic_tokenize=True, tokenize_chinese_chars=True, strip_accents=None,
                            model_max_length=config.max_position_embeddings)
    (output / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (output / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------------
# Converting a directory
# ----------------------------------------------------------------------------------------------------

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


def detect_source(path) -> str:
    """'tf' for a Google checkpoint (prefix or directory), 'huggingface' for a Hugging Face directory."""
    path = Path(path)
    if Path(f"{path}.index").exists():
        return "tf"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise ValueError(f"{path}: expected a checkpoint directory (or a TF checkpoint prefix)")
    if (path / "bert_jax.json").exists():
        raise ValueError(f"{path} is already a bert_jax model directory (it has bert_jax.json)")
    if any(path.glob("*.index")):
        return "tf"
    if (path / "config.json").exists() and any((path / f).exists() for f in HF_WEIGHT_FILES):
        return "huggingface"
    present = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
    raise FileNotFoundError(
        f"{path}: neither a Google TF checkpoint (bert_model.ckpt.index + bert_config.json) nor a Hugging Face "
        f"directory (config.json + model.safetensors or pytorch_model.bin); it holds {present}")


def read_hf_state_dict(directory) -> dict:
    """All tensors of a Hugging Face directory as numpy (safetensors, sharded or not; pytorch_model.bin via torch)."""
    directory = Path(directory)
    index = next((directory / f for f in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                  if (directory / f).exists()), None)
    if index is not None:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [directory / s for s in shards]
    elif (directory / "model.safetensors").exists():
        files = [directory / "model.safetensors"]
    elif (directory / "pytorch_model.bin").exists():
        files = [directory / "pytorch_model.bin"]
    else:
        raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin")
    out = {}
    for f in files:
        if not f.exists():
            raise FileNotFoundError(f"{f}: listed in {index.name} but missing")
        out.update(_read_safetensors(f) if f.suffix == ".safetensors" else _read_torch_bin(f))
    return out


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    out = {}
    try:
        with safe_open(str(path), framework="np") as f:
            for key in f.keys():
                try:
                    value = f.get_tensor(key)
                except TypeError:  # bfloat16 before ml_dtypes registered it with numpy: read the raw bytes
                    value = _read_bfloat16_tensor(path, key)
                # Half-precision checkpoints: float32 here, so every reader hands back the same dtypes.
                out[key] = value.astype(np.float32) if value.dtype.name in ("bfloat16", "float16") else value
    except SafetensorError as e:  # a short header or data that does not cover the tensors: an interrupted download
        raise ValueError(f"{path}: truncated or corrupt safetensors file ({path.stat().st_size} bytes; {e}); "
                         "download it again") from e
    return out


def _read_bfloat16_tensor(path: Path, key: str) -> np.ndarray:
    import ml_dtypes

    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        info = json.loads(f.read(header_len))[key]
        if info["dtype"] != "BF16":
            raise ValueError(f"{path}: cannot read tensor {key} of dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        f.seek(8 + header_len + begin)
        raw = f.read(end - begin)
    return np.frombuffer(raw, dtype=ml_dtypes.bfloat16).reshape(info["shape"]).astype(np.float32)


def _read_torch_bin(path: Path) -> dict:
    try:
        import torch
    except ImportError:
        raise ValueError(f"{path}: reading pytorch_model.bin needs torch (pip install torch), or convert the "
                         "directory to model.safetensors") from None
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: _to_numpy(v) for k, v in state.items()}


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def resolve_lower_case(directory: Path, lower_case: Optional[bool]) -> Optional[bool]:
    """The source's own word when it has one (tokenizer_config.json do_lower_case, else the lowercase flag of a
    tokenizer.json BertNormalizer), else the caller's choice, else None (the tokenizer infers it from the vocab)."""
    stored = None
    if (directory / "tokenizer_config.json").exists():
        stored = _read_json(directory / "tokenizer_config.json").get("do_lower_case")
    if stored is None and (directory / "tokenizer.json").exists():
        normalizer = _read_json(directory / "tokenizer.json").get("normalizer") or {}
        if normalizer.get("type") == "BertNormalizer":
            stored = normalizer.get("lowercase")
    if stored is None:
        return lower_case
    if lower_case is not None and bool(stored) != lower_case:
        log.warning("%s says lower_case=%s; ignoring the requested lower_case=%s", directory, stored, lower_case)
    return bool(stored)


def find_vocab(directory: Path, scratch: Path) -> Path:
    """The source's vocab.txt; failing that (transformers 5 saves only tokenizer.json), the WordPiece vocabulary
    of its tokenizer.json written to scratch/vocab.txt."""
    vocab = directory / "vocab.txt"
    if vocab.exists():
        return vocab
    tokenizer_json = directory / "tokenizer.json"
    if not tokenizer_json.exists():
        raise FileNotFoundError(f"{vocab}: missing (the WordPiece vocabulary the checkpoint was trained with; a "
                                "Hugging Face tokenizer.json with a WordPiece model would do too)")
    model = _read_json(tokenizer_json).get("model") or {}
    if model.get("type") != "WordPiece":
        raise ValueError(f"{tokenizer_json}: tokenizer model {model.get('type')!r} is not WordPiece, and there is "
                         f"no {vocab.name}")
    by_id = sorted(model["vocab"].items(), key=lambda item: item[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise ValueError(f"{tokenizer_json}: WordPiece ids are not 0..{len(by_id) - 1}")
    scratch_vocab = scratch / "vocab.txt"
    scratch_vocab.write_text("".join(token + "\n" for token, _ in by_id), encoding="utf-8")
    return scratch_vocab


def convert_checkpoint(source, output, lower_case: Optional[bool] = None) -> dict:
    """Google TF checkpoint or Hugging Face directory -> bert_jax model directory. Returns the manifest written."""
    from bert_jax.tokenizer import load_tokenizer

    kind = detect_source(source)
    source = Path(source)
    output = _fresh_output_dir(output)  # refuse a used directory before the slow part
    if kind == "tf":
        directory = source if source.is_dir() else source.parent
        config_file = directory / "bert_config.json"
        raw_config = _read_json(config_file)
    else:
        directory = source
        config_file = directory / "config.json"
        raw_config = _read_json(config_file)
    config = config_from_hf(raw_config, str(config_file))

    with tempfile.TemporaryDirectory() as scratch:
        vocab = find_vocab(directory, Path(scratch))
        tokenizer = load_tokenizer(str(vocab), lower_case=resolve_lower_case(directory, lower_case))
        if tokenizer.vocab_size > config.vocab_size:
            raise ValueError(f"{vocab} has {tokenizer.vocab_size} tokens but {config_file.name} says "
                             f"vocab_size={config.vocab_size}")
        if tokenizer.vocab_size != config.vocab_size:
            log.warning("%s has %d tokens, %s vocab_size=%d: the extra embedding rows are never used",
                        vocab, tokenizer.vocab_size, config_file.name, config.vocab_size)
        return _convert_weights(kind, source, directory, raw_config, config, tokenizer, output)


def _convert_weights(kind, source: Path, directory: Path, raw_config: Mapping, config: BertConfig, tokenizer,
                     output) -> dict:
    from bert_jax.pretrained import save_pretrained

    if kind == "tf":
        imported = import_tf_checkpoint(str(source), config)
    else:
        imported = import_hf_state_dict(read_hf_state_dict(directory), config, f"Hugging Face checkpoint {directory}")
    params, fresh = fill_missing_parts(imported, config)
    warnings = []
    if fresh:
        warnings.append(f"{imported.source} has no {'/'.join(fresh)} parameters: initialised fresh")
        log.warning(warnings[-1])
    optimizer_variables = [n for n in imported.skipped if _TF_OPTIMIZER_VARIABLE.search(n)]
    if optimizer_variables:
        warnings.append(f"skipped {len(optimizer_variables)} optimizer variables (*/adam_m, */adam_v, global_step): "
                        "fine-tuning starts from the weights alone")
        log.warning(warnings[-1])

    task, labels = _task_from_hf_config(raw_config, imported.parts)
    return save_pretrained(
        output, config, params, tokenizer,
        source={"format": kind, "path": str(source.resolve())},
        fresh=fresh, task=task, labels=labels, warnings=warnings)


def _task_from_hf_config(raw_config: Mapping, parts: list) -> tuple[Optional[str], Optional[list]]:
    """The fine-tuning task and label names a Hugging Face config records for a classifier/QA head."""
    if "qa_outputs" in parts:
        return "question_answering", None
    if "classifier" not in parts:
        return None, None
    by_class = {v: k for k, v in HF_ARCHITECTURES.items() if k != "regression"}
    architecture = (raw_config.get("architectures") or [""])[0]
    task = by_class.get(architecture, "sequence_classification")
    if raw_config.get("problem_type") == "regression":
        task = "regression"
    id2label = raw_config.get("id2label")
    labels = [id2label[k] for k in sorted(id2label, key=int)] if id2label else None
    return task, labels


def _fresh_output_dir(output) -> Path:
    """The output directory, created; refuses one that already holds files rather than mixing two models."""
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ValueError(f"{output}: output directory is not empty; choose a new one")
    output.mkdir(parents=True, exist_ok=True)
    return output.resolve()
