"""Fine-tuning heads on top of the BERT encoder (bert_jax/model.py).

Each model keeps the encoder under the key `bert`, so any checkpoint's encoder loads into any head, and the
head's own parameters use Hugging Face's names (`classifier`, `qa_outputs`) so fine-tuned models export 1:1:

    BertForSequenceClassification  pooled -> dropout -> classifier      [B, num_labels] (num_labels=1: regression)
    BertForTokenClassification     sequence -> dropout -> classifier    [B, T, num_labels]
    BertForQuestionAnswering       sequence -> qa_outputs               start, end logits [B, T]
    BertForMultipleChoice          [B, C, T] -> pooled -> dropout -> classifier(1)  [B, C]

Logits are float32 whatever the compute dtype, for the losses.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from bert_jax.dropout import Dropout
from bert_jax.model import BertConfig, BertModel, Dense


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
