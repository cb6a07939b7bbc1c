"""Fine-tuning heads on top of the BERT encoder (bert_jax/model.py), and the table of fine-tuning kinds.

Each model keeps the encoder under the key `bert`, so any checkpoint's encoder loads into any head, and the
head's own parameters use Hugging Face's names (`classifier`, `qa_outputs`) so fine-tuned models export 1:1:

    BertForSequenceClassification  pooled -> dropout -> classifier      [B, num_labels] (num_labels=1: regression)
    BertForTokenClassification     sequence -> dropout -> classifier    [B, T, num_labels]
    BertForQuestionAnswering       sequence -> qa_outputs               start, end logits [B, T]
    BertForMultipleChoice          [B, C, T] -> pooled -> dropout -> classifier(1)  [B, C]

Logits are float32 whatever the compute dtype, for the losses.

`KINDS` says, per task kind (bert_jax.tasks: a task's `kind`), everything that differs between kinds: the model,
the head's parameter name, the targets, the loss and what it divides by, the outputs' names, which features and
outputs have a token axis, and the Hugging Face class it exports to. The trainer (`FinetuneObjective`), predict,
export and checkpoint import read it and never branch on the kind: a new head is one entry here plus a task.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.dropout import Dropout
from bert_jax.model import BertConfig, BertModel, Dense

# The model inputs of every kind; the rest of a task's features (example_index, char spans, ...) are for decoding.
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
IGNORE = -100  # the tagging label of word pieces the loss skips (bert_jax/tasks/ner.py writes it)
SPAN_PADDING_LOGIT = -1e9  # finite: a window's softmax over its real tokens never sees inf - inf

# ----------------------------------------------------------------------------------------------------
# The heads
# ----------------------------------------------------------------------------------------------------


def _classify(config: BertConfig, x, num_labels: int, dropout_rate: Optional[float], deterministic: bool):
    """dropout -> dense `classifier`; called inside a head's compact __call__, so the params sit at its top."""
    rate = config.hidden_dropout_rate if dropout_rate is None else dropout_rate
    x = Dropout(rate)(x, deterministic=deterministic)
    return Dense(num_labels, ("embed", None), config, name="classifier")(x).astype(jnp.float32)


class BertForSequenceClassification(nn.Module):
    config: BertConfig
    num_labels: int
    dropout_rate: Optional[float] = None

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic: bool = True):
        _, pooled = BertModel(self.config, name="bert")(input_ids, attention_mask, token_type_ids, deterministic)
        return _classify(self.config, pooled, self.num_labels, self.dropout_rate, deterministic)


class BertForTokenClassification(nn.Module):
    config: BertConfig
    num_labels: int
    dropout_rate: Optional[float] = None

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic: bool = True):
        sequence, _ = BertModel(self.config, name="bert")(input_ids, attention_mask, token_type_ids, deterministic)
        return _classify(self.config, sequence, self.num_labels, self.dropout_rate, deterministic)


class BertForQuestionAnswering(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic: bool = True):
        sequence, _ = BertModel(self.config, name="bert")(input_ids, attention_mask, token_type_ids, deterministic)
        logits = Dense(2, ("embed", None), self.config, name="qa_outputs")(sequence).astype(jnp.float32)  # [B, T, 2]
        return logits[..., 0], logits[..., 1]


class BertForMultipleChoice(nn.Module):
    config: BertConfig
    dropout_rate: Optional[float] = None

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic: bool = True):
        if input_ids.ndim != 3:
            raise ValueError(f"multiple choice input_ids must be [batch, choices, length], got {input_ids.shape}")
        batch, choices, length = input_ids.shape

        def flat(x):  # [B, C, T] -> [B * C, T]
            return None if x is None else x.reshape(batch * choices, length)

        _, pooled = BertModel(self.config, name="bert")(flat(input_ids), flat(attention_mask), flat(token_type_ids),
                                                        deterministic)
        logits = _classify(self.config, pooled, 1, self.dropout_rate, deterministic)  # [B * C, 1]
        return logits.reshape(batch, choices)


# ----------------------------------------------------------------------------------------------------
# The losses: (model outputs, batch, normalizers) -> (loss, metrics)
# ----------------------------------------------------------------------------------------------------
# Sums over the batch divided by whole-batch counts (`normalizers`, computed once on the global batch), so that
# micro-batches add up exactly (bert_jax/trainer.py Objective).


def cross_entropy(logits, labels):
    """-log softmax(logits)[label] over the last axis; logits [..., K], labels [...] -> [...]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.take_along_axis(logp, labels.astype(jnp.int32)[..., None], axis=-1)[..., 0]


def example_count(batch) -> dict:
    return {"count": jnp.float32(batch["input_ids"].shape[0])}


def labeled_token_count(batch) -> dict:
    """Examples, and the word pieces that carry a tag (at least 1, so that an all-ignored batch divides safely)."""
    tokens = jnp.maximum((batch["labels"] != IGNORE).sum(), 1).astype(jnp.float32)
    return {**example_count(batch), "tokens": tokens}


def classification_loss(logits, batch, normalizers):
    """Mean cross-entropy over the examples: classification logits [B, L], or multiple choice [B, C]."""
    labels = batch["labels"].astype(jnp.int32)
    ce = cross_entropy(logits, labels)  # [B]
    accuracy = jnp.sum(jnp.argmax(logits, -1) == labels) / normalizers["count"]
    return jnp.sum(ce) / normalizers["count"], {"accuracy": accuracy}


def regression_loss(logits, batch, normalizers):
    """Mean squared error of the single output."""
    errors = logits[:, 0] - batch["labels"].astype(jnp.float32)  # [B, 1] -> [B]
    return jnp.sum(errors ** 2) / normalizers["count"], {}


def tagging_loss(logits, batch, normalizers):
    """Cross-entropy summed over the labeled word pieces / their count (IGNORE labels left out)."""
    labels = batch["labels"].astype(jnp.int32)
    kept = labels != IGNORE  # [B, T]
    safe = jnp.where(kept, labels, 0)
    ce = cross_entropy(logits, safe)  # [B, T]
    correct = (jnp.argmax(logits, -1) == safe) & kept
    return (jnp.sum(jnp.where(kept, ce, 0.0)) / normalizers["tokens"],
            {"accuracy": jnp.sum(correct) / normalizers["tokens"]})


def span_loss(outputs, batch, normalizers):
    """(start CE + end CE) / 2 over each window's real tokens, averaged over windows.

    The softmax runs over the real tokens only: the original also spreads probability over padding, which makes
    the loss depend on how far a window is padded (max_seq_length, or a length bucket)."""
    real = batch["attention_mask"] != 0  # [B, T]
    start, end = (jnp.where(real, logits.astype(jnp.float32), SPAN_PADDING_LOGIT) for logits in outputs)
    start_ce = cross_entropy(start, batch["start_positions"])  # [B]
    end_ce = cross_entropy(end, batch["end_positions"])
    loss = jnp.sum(start_ce + end_ce) / 2 / normalizers["count"]
    hits = (jnp.argmax(start, -1) == batch["start_positions"]) & (jnp.argmax(end, -1) == batch["end_positions"])
    return loss, {"span_accuracy": jnp.sum(hits) / normalizers["count"]}


# ----------------------------------------------------------------------------------------------------
# The kinds
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Kind:
    """What one fine-tuning kind is."""

    model: Callable[[BertConfig, int], nn.Module]  # (encoder config, num_labels) -> encoder 'bert' + the head
    head: str  # the head's output layer, by Hugging Face's name: what a fine-tuned checkpoint adds to the encoder
    loss: Callable  # (model outputs, batch, normalizers) -> (loss, metrics)
    outputs: tuple[str, ...]  # the model's outputs by name, in the order it returns them (what task.decode reads)
    hf_task: str  # the model directory manifest's task (bert_jax/convert.py HF_ARCHITECTURES)
    hf_class: str  # the Hugging Face class export-hf writes
    targets: tuple[str, ...] = ("labels",)  # the features the loss compares with
    normalizers: Callable = example_count  # batch -> {name: whole-batch count} the loss divides by
    per_token: tuple[str, ...] = ()  # the outputs with a token axis (axis 1)
    sequence_keys: tuple[str, ...] = INPUT_KEYS  # the features with a token axis (last), which a length bucket cuts
    head_width: Optional[int] = None  # the head layer's outputs; None: the task's num_labels
    choices: bool = False  # inputs are [B, C, T], one sequence per choice
    class_labels: bool = False  # the head's outputs are the task's labels (named in the Hugging Face config)

    def width(self, num_labels: int) -> int:
        """The outputs of the head layer for a task with `num_labels` (bert_jax.tasks.Task.num_labels)."""
        return num_labels if self.head_width is None else self.head_width


KINDS = {
    "classification": Kind(
        model=lambda bert, num_labels: BertForSequenceClassification(bert, num_labels=num_labels),
        head="classifier", loss=classification_loss, outputs=("logits",),
        hf_task="sequence_classification", hf_class="BertForSequenceClassification", class_labels=True),
    "regression": Kind(
        model=lambda bert, num_labels: BertForSequenceClassification(bert, num_labels=num_labels),
        head="classifier", loss=regression_loss, outputs=("logits",),
        hf_task="regression", hf_class="BertForSequenceClassification"),
    "tagging": Kind(
        model=lambda bert, num_labels: BertForTokenClassification(bert, num_labels=num_labels),
        head="classifier", loss=tagging_loss, outputs=("logits",),
        hf_task="token_classification", hf_class="BertForTokenClassification",
        normalizers=labeled_token_count, per_token=("logits",), sequence_keys=(*INPUT_KEYS, "labels"),
        class_labels=True),
    "span": Kind(
        model=lambda bert, num_labels: BertForQuestionAnswering(bert),
        head="qa_outputs", loss=span_loss, outputs=("start_logits", "end_logits"),
        hf_task="question_answering", hf_class="BertForQuestionAnswering",
        targets=("start_positions", "end_positions"), per_token=("start_logits", "end_logits"), head_width=2),
    "multiple_choice": Kind(
        model=lambda bert, num_labels: BertForMultipleChoice(bert),
        head="classifier", loss=classification_loss, outputs=("logits",),
        hf_task="multiple_choice", hf_class="BertForMultipleChoice", choices=True),
}


def kind_of(name: str) -> Kind:
    if name not in KINDS:
        raise ValueError(f"unknown task kind {name!r}; known: {', '.join(KINDS)}")
    return KINDS[name]


# ----------------------------------------------------------------------------------------------------
# The objective the trainer runs
# ----------------------------------------------------------------------------------------------------


class FinetuneObjective:
    """A task kind's model and loss as a trainer.Objective (bert_jax/trainer.py), all read from KINDS:

        classification, multiple choice   mean cross-entropy over examples
        regression                        mean squared error
        tagging                           cross-entropy summed over labeled word pieces / their count (-100 ignored)
        span                              (start CE + end CE) / 2 over the real tokens, averaged over windows
    """

    def __init__(self, kind: str, bert: BertConfig, num_labels: int, num_choices: int = 4):
        self.kind, self.spec = kind, kind_of(kind)
        self.config, self.num_labels, self.num_choices = bert, num_labels, num_choices
        self.model = self.spec.model(bert, num_labels)

    @classmethod
    def for_task(cls, task, bert: BertConfig) -> "FinetuneObjective":
        """The objective of a bert_jax.tasks task: its kind, its head's label count and (multiple choice) choices."""
        return cls(task.kind, bert, task.num_labels, getattr(task, "num_choices", 4))

    def dummy_inputs(self):
        shape = (1, self.num_choices, 8) if self.spec.choices else (1, 8)
        ones = jnp.ones(shape, jnp.int32)
        return ones, ones, jnp.zeros(shape, jnp.int32)

    def init_params(self, rng):
        return self.model.init(rng, *self.dummy_inputs(), deterministic=True)["params"]

    def init_head(self, rng) -> dict:
        """Fresh head parameters alone (host arrays): the head's output layer (`Kind.head`) initialised on its own,
        instead of initialising a whole encoder only to discard it. create_train_state checks the assembled tree
        against the full model's."""
        layer = Dense(self.spec.width(self.num_labels), ("embed", None), self.config)
        hidden = jnp.zeros((1, self.config.hidden_size), jnp.float32)  # [B, H] stand-in activations
        return {self.spec.head: jax.device_get(nn.meta.unbox(layer.init(rng, hidden)["params"]))}

    def apply(self, params, batch, rng=None, train: bool = False):
        return self.model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                                batch["token_type_ids"], deterministic=not train,
                                rngs={"dropout": rng} if train else {})

    def named_outputs(self, params, batch) -> dict:
        """{output name: array}, as task.decode reads them; no dropout."""
        out = self.apply(params, batch)
        return dict(zip(self.spec.outputs, out if isinstance(out, tuple) else (out,), strict=True))

    def normalizers(self, batch):
        return self.spec.normalizers(batch)

    def loss(self, params, batch, rng, normalizers, train: bool):
        return self.spec.loss(self.apply(params, batch, rng, train), batch, normalizers)
