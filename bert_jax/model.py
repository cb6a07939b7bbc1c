"""BERT in Flax linen, faithful to google-research/bert modeling.py (see ../shared/docs/SPEC.md §2).

Parameter names follow the original TF variables so that Google and Hugging Face checkpoints map 1:1:

    bert/embeddings/{word_embeddings, token_type_embeddings, position_embeddings, LayerNorm}
    bert/encoder/layer_N/attention/self/{query,key,value}
    bert/encoder/layer_N/attention/output/{dense, LayerNorm}
    bert/encoder/layer_N/intermediate/dense
    bert/encoder/layer_N/output/{dense, LayerNorm}
    bert/pooler/dense
    cls/predictions/{transform/dense, transform/LayerNorm, output_bias}
    cls/seq_relationship/{output_weights, output_bias}

(LayerNorm `gamma`/`beta` are Flax's `scale`/`bias`.) With `scan_layers=True` the layers are stacked
into `bert/encoder/layer` with a leading `layers` axis; `scan_params`/`unscan_params` convert.

Every parameter carries logical axis names (see bert_jax/sharding.py for the rules mapping them to mesh
axes). The module tree only ever sees a frozen `BertConfig`, never a ConfigDict.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bert_jax.dropout import Dropout

# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------

# Named sizes (Turc et al. 2019 for the small ones; Devlin et al. 2019 for base/large).
# heads = hidden / 64 and intermediate = 4 * hidden throughout.
SIZES = {
    "tiny": dict(num_layers=2, hidden_size=128),
    "mini": dict(num_layers=4, hidden_size=256),
    "small": dict(num_layers=4, hidden_size=512),
    "medium": dict(num_layers=8, hidden_size=512),
    "base": dict(num_layers=12, hidden_size=768),
    "large": dict(num_layers=24, hidden_size=1024),
}

GELU_VARIANTS = ("erf", "tanh")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# auto: jax.nn.dot_product_attention (lets XLA/cuDNN fuse it) unless attention dropout is active, which
# that primitive cannot apply; then the explicit softmax path. xla/cudnn force the primitive's backend.
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "explicit")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Everything the model needs to know; built once from the run config and never mutated."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    gelu: str = "erf"
    dtype: str = "float32"  # compute dtype; parameters are always float32
    attention_impl: str = "auto"
    scan_layers: bool = False
    remat_policy: str = "none"

    def __post_init__(self):
        def bad(field, why):
            raise ValueError(f"BertConfig.{field}={getattr(self, field)!r}: {why}")

        for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                      "max_position_embeddings", "type_vocab_size"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) <= 0:
                bad(field, "must be a positive integer")
        if self.hidden_size % self.num_heads:
            bad("hidden_size", f"must be divisible by num_heads={self.num_heads}")
        for field in ("hidden_dropout_rate", "attention_dropout_rate"):
            if not 0.0 <= getattr(self, field) < 1.0:
                bad(field, "must be in [0, 1)")
        if self.gelu not in GELU_VARIANTS:
            bad("gelu", f"must be one of {GELU_VARIANTS}")
        if self.dtype not in DTYPES:
            bad("dtype", f"must be one of {tuple(DTYPES)}")
        if self.attention_impl not in ATTENTION_IMPLS:
            bad("attention_impl", f"must be one of {ATTENTION_IMPLS}")
        if self.remat_policy not in REMAT_POLICIES:
            bad("remat_policy", f"must be one of {REMAT_POLICIES}")

    @classmethod
    def from_size(cls, size: str, **overrides) -> "BertConfig":
        """A named size (tiny, mini, small, medium, base, large) with optional field overrides."""
        if size not in SIZES:
            raise ValueError(f"unknown model size {size!r}; known sizes: {', '.join(SIZES)}")
        dims = dict(SIZES[size])
        dims["num_heads"] = dims["hidden_size"] // 64
        dims["intermediate_size"] = 4 * dims["hidden_size"]
        return cls(**{**dims, **overrides})

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    def replace(self, **changes) -> "BertConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "BertConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown BertConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# ----------------------------------------------------------------------------------------------------
# Initialisers and logical axes
# ----------------------------------------------------------------------------------------------------


def truncated_normal(stddev: float):
    """TF1's truncated_normal_initializer: N(0, stddev) cut at ±2 stddev, *not* rescaled afterwards.

    (jax.nn.initializers.truncated_normal rescales so the result has exactly `stddev`; the original
    checkpoints were initialised without that correction.)
    """

    def init(key, shape, dtype=jnp.float32):
        return jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32).astype(dtype) * stddev

    return init


def _param(module: nn.Module, name: str, init, shape, axes):
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


class Dense(nn.Module):
    """y = x @ kernel + bias with a TF-style kernel layout [in, out] and logical axis names."""

    features: int
    axes: tuple  # logical names of (in, out)
    config: BertConfig

    @nn.compact
    def weights(self, in_features: int):
        """(kernel, bias), for callers that fuse several projections into one matmul."""
        kernel = _param(self, "kernel", truncated_normal(self.config.initializer_range),
                        (in_features, self.features), self.axes)
        bias = _param(self, "bias", nn.initializers.zeros, (self.features,), self.axes[1:])
        return kernel, bias

    def __call__(self, x):
        kernel, bias = self.weights(x.shape[-1])
        dtype = self.config.compute_dtype
        return jnp.dot(x.astype(dtype), kernel.astype(dtype)) + bias.astype(dtype)


class LayerNorm(nn.Module):
    """LayerNorm with statistics in float32 (bf16 variance is too coarse), output in compute dtype."""

    config: BertConfig

    @nn.compact
    def __call__(self, x):
        scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",))
        bias = _param(self, "bias", nn.initializers.zeros, (x.shape[-1],), ("embed",))
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.config.layer_norm_eps) * scale + bias
        return y.astype(self.config.compute_dtype)


def gelu(x, config: BertConfig):
    return jax.nn.gelu(x, approximate=config.gelu == "tanh")


def _activation_constraint(x):
    # [batch, length, hidden] activations: batch over data-parallel axes, the rest replicated.
    return nn.with_logical_constraint(x, ("batch", "length", "act_embed"))


# ----------------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------------


class Embeddings(nn.Module):
    config: BertConfig

    def setup(self):
        c = self.config
        init = truncated_normal(c.initializer_range)
        self.word_embeddings = _param(self, "word_embeddings", init, (c.vocab_size, c.hidden_size),
                                      ("vocab", "embed"))
        self.token_type_embeddings = _param(self, "token_type_embeddings", init,
                                            (c.type_vocab_size, c.hidden_size), (None, "embed"))
        self.position_embeddings = _param(self, "position_embeddings", init,
                                          (c.max_position_embeddings, c.hidden_size), (None, "embed"))
        self.layer_norm = LayerNorm(c, name="LayerNorm")
        self.dropout = Dropout(c.hidden_dropout_rate)

    def __call__(self, input_ids, token_type_ids, deterministic: bool, position_ids=None):
        seq_len = input_ids.shape[1]
        # Positions 0..T-1, or per token (a packed row restarts them at each instance).
        positions = (self.position_embeddings[None, :seq_len] if position_ids is None
                     else jnp.take(self.position_embeddings, position_ids, axis=0))  # [1 or B, T, H]
        x = (jnp.take(self.word_embeddings, input_ids, axis=0)  # [B, T, H]
             + jnp.take(self.token_type_embeddings, token_type_ids, axis=0)
             + positions)
        x = self.layer_norm(x)
        return self.dropout(x, deterministic=deterministic)

    def attend(self, x):
        """Logits against the (tied) word embedding matrix: [..., H] -> [..., V]."""
        dtype = self.config.compute_dtype
        return jnp.dot(x.astype(dtype), self.word_embeddings.astype(dtype).T)


class SelfAttention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        c = self.config
        batch, length = x.shape[:2]

        # One matmul against the three kernels stacked to [H, 3, H], the parameters keeping the original names
        # and layout. Narrow products run below peak: on the 2-core CI CPU, [4096, 512] x [512, 512] ran at
        # 88 GFLOP/s and x [512, 1536] at 126, which took the small pretraining step from 5.28 to 4.80 s.
        dtype = c.compute_dtype
        weights = [Dense(c.hidden_size, ("embed", "heads"), c, name=name).weights(x.shape[-1])
                   for name in ("query", "key", "value")]
        kernel = jnp.stack([w for w, _ in weights], axis=1).astype(dtype)  # [H, 3, H]
        bias = jnp.stack([b for _, b in weights]).astype(dtype)  # [3, H]
        qkv = jnp.einsum("bth,hkj->btkj", x.astype(dtype), kernel) + bias  # [B, T, 3, H]
        q, k, v = (qkv[:, :, i].reshape(batch, length, c.num_heads, c.head_dim) for i in range(3))
        # mask [B, S]: padding keys are never attended; [B, T, S] (packed rows): which keys each query may attend.
        key_mask = (mask[:, None, None, :] if mask.ndim == 2 else mask[:, None]).astype(bool)  # [B, 1, 1|T, S]
        scale = 1.0 / math.sqrt(c.head_dim)
        dropout_active = not deterministic and c.attention_dropout_rate > 0
        impl = c.attention_impl
        if impl == "auto":
            impl = "explicit" if dropout_active else None  # None: JAX picks cuDNN or XLA
        elif impl in ("xla", "cudnn") and dropout_active:
            raise ValueError(
                f"attention_impl={c.attention_impl!r} cannot apply attention dropout "
                f"(attention_dropout_rate={c.attention_dropout_rate}); set it to 0 or use 'auto'/'explicit'")
        if impl == "explicit":
            logits = jnp.einsum("btnd,bsnd->bnts", q, k) * jnp.asarray(scale, q.dtype)
            logits = jnp.where(key_mask, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
            probs = Dropout(c.attention_dropout_rate)(probs, deterministic=deterministic)
            out = jnp.einsum("bnts,bsnd->btnd", probs, v)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=key_mask, scale=scale, implementation=impl)
        return out.reshape(batch, length, c.hidden_size)  # [B, T, H]


class Output(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual): the post-LN sublayer tail of the original."""

    config: BertConfig
    in_axis: str

    @nn.compact
    def __call__(self, x, residual, deterministic: bool):
        c = self.config
        x = Dense(c.hidden_size, (self.in_axis, "embed"), c, name="dense")(x)
        x = Dropout(c.hidden_dropout_rate)(x, deterministic=deterministic)
        return LayerNorm(c, name="LayerNorm")(x + residual)


class Attention(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        y = SelfAttention(self.config, name="self")(x, mask, deterministic)
        return Output(self.config, "heads", name="output")(y, x, deterministic)


class Intermediate(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        return gelu(Dense(c.intermediate_size, ("embed", "mlp"), c, name="dense")(x), c)


class Layer(nn.Module):
    """One post-LN transformer block: LN(x + Attn(x)), then LN(x + FFN(x))."""

    config: BertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        x = Attention(self.config, name="attention")(x, mask, deterministic)
        h = Intermediate(self.config, name="intermediate")(x)
        x = Output(self.config, "mlp", name="output")(h, x, deterministic)
        return _activation_constraint(x)


_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Encoder(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        c = self.config
        layer_cls = Layer
        if c.remat_policy != "none":
            # static_argnums counts `self` as 0: `deterministic` is argument 3.
            layer_cls = nn.remat(Layer, policy=_REMAT_POLICIES[c.remat_policy], prevent_cse=not c.scan_layers,
                                 static_argnums=(3,))
        if c.scan_layers:
            def body(module, carry, mask, deterministic):
                return module(carry, mask, deterministic), None

            scanned = nn.scan(
                body, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast), length=c.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = scanned(layer_cls(c, name="layer"), x, mask, deterministic)
            return x
        for i in range(c.num_layers):
            x = layer_cls(c, name=f"layer_{i}")(x, mask, deterministic)
        return x


class Pooler(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, cls_output):
        """The [CLS] token's output: [B, H] (or [B, K, H], one per packed instance) -> the same shape."""
        c = self.config
        return jnp.tanh(Dense(c.hidden_size, ("embed", "act_embed_out"), c, name="dense")(cls_output))


class BertModel(nn.Module):
    """The encoder: returns (sequence_output [B, T, H], pooled_output [B, H]) in the compute dtype.

    Packed rows (SPEC §5) pass `instance_ids` [B, T] (1, 2, ... per instance, 0 for padding): attention is then
    block-diagonal, each token attending only to its own instance's tokens; `position_ids` [B, T] restart at each
    instance, and `cls_positions` [B, K] gathers each instance's [CLS] for the pooler (pooled [B, K, H]).
    Attention paths: the explicit softmax (with attention dropout; CPU and TPU training) and jax.nn's XLA
    kernel take the [B, 1, T, S] mask as it is; on GPU, the cuDNN fused kernel takes it as a dense additive bias
    (JAX's public API has no segment-aware cuDNN path), so packing there costs a [B, T, S] mask per step.
    """

    config: BertConfig

    def setup(self):
        self.embeddings = Embeddings(self.config)
        self.encoder = Encoder(self.config)
        self.pooler = Pooler(self.config)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic: bool = True,
                 instance_ids=None, position_ids=None, cls_positions=None):
        c = self.config
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        if input_ids.shape[1] > c.max_position_embeddings:
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds the model's "
                             f"max_position_embeddings={c.max_position_embeddings}")
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        mask = attention_mask
        if instance_ids is not None:  # [B, T, S]: same instance, and not padding
            mask = (instance_ids[:, :, None] == instance_ids[:, None, :]) & (instance_ids[:, None, :] > 0)
        x = _activation_constraint(self.embeddings(input_ids, token_type_ids, deterministic, position_ids))
        x = self.encoder(x, mask, deterministic)
        cls = x[:, 0] if cls_positions is None else gather_positions(x, cls_positions)  # [B, H] or [B, K, H]
        return x, self.pooler(cls)

    def attend(self, x):
        return self.embeddings.attend(x)


# ----------------------------------------------------------------------------------------------------
# Pretraining heads
# ----------------------------------------------------------------------------------------------------


def gather_positions(sequence, positions):
    """sequence [B, T, H], positions [B, P] -> [B, P, H]."""
    return jnp.take_along_axis(sequence, positions[..., None].astype(jnp.int32), axis=1)


class Predictions(nn.Module):
    """cls/predictions with the original nesting: transform/{dense, LayerNorm}, output_bias."""

    config: BertConfig

    @nn.compact
    def __call__(self, x, attend):
        c = self.config
        x = Transform(c, name="transform")(x)
        bias = _param(self, "output_bias", nn.initializers.zeros, (c.vocab_size,), ("vocab",))
        return attend(x).astype(jnp.float32) + bias  # [..., V], float32 for the loss


class Transform(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        x = gelu(Dense(c.hidden_size, ("embed", "act_embed_out"), c, name="dense")(x), c)
        return LayerNorm(c, name="LayerNorm")(x)


class SeqRelationship(nn.Module):
    """cls/seq_relationship: NSP logits from the pooled output; weights stored [2, H] as in TF."""

    config: BertConfig

    @nn.compact
    def __call__(self, pooled):
        c = self.config
        w = _param(self, "output_weights", truncated_normal(c.initializer_range), (2, c.hidden_size),
                   (None, "embed"))
        b = _param(self, "output_bias", nn.initializers.zeros, (2,), (None,))
        return (jnp.dot(pooled.astype(jnp.float32), w.T) + b)  # [B, 2]


class PretrainingHeads(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, sequence_output, pooled_output, attend):
        mlm = Predictions(self.config, name="predictions")(sequence_output, attend)
        nsp = SeqRelationship(self.config, name="seq_relationship")(pooled_output)
        return mlm, nsp


class BertForPreTraining(nn.Module):
    """Encoder + MLM and NSP heads.

    With `masked_lm_positions` [B, P] the MLM head runs only on those gathered positions (the original
    run_pretraining.py; P is ~15% of T, so the 30k-wide decoder costs ~7x less); without it, on every
    position (what fill-mask needs).
    """

    config: BertConfig

    def setup(self):
        self.bert = BertModel(self.config)
        self.cls = PretrainingHeads(self.config)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, masked_lm_positions=None,
                 deterministic: bool = True, instance_ids=None, position_ids=None, cls_positions=None):
        # Packed rows (instance_ids, position_ids, cls_positions: see BertModel) give NSP logits [B, K, 2].
        sequence, pooled = self.bert(input_ids, attention_mask, token_type_ids, deterministic, instance_ids,
                                     position_ids, cls_positions)
        mlm_input = sequence if masked_lm_positions is None else gather_positions(sequence, masked_lm_positions)
        mlm_logits, nsp_logits = self.cls(mlm_input, pooled, self.bert.attend)
        return dict(mlm_logits=mlm_logits, nsp_logits=nsp_logits, sequence_output=sequence, pooled_output=pooled)


# ----------------------------------------------------------------------------------------------------
# Parameters: creation without allocation, counting, scan layout
# ----------------------------------------------------------------------------------------------------


def dummy_inputs(batch: int = 1, length: int = 8):
    ids = jnp.zeros((batch, length), jnp.int32)
    return dict(input_ids=ids, attention_mask=jnp.ones_like(ids), token_type_ids=ids)


def abstract_params(module: nn.Module, **inputs) -> Any:
    """Boxed (logically partitioned) parameter shapes from jax.eval_shape: nothing is allocated."""
    inputs = inputs or dummy_inputs()
    variables = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), **inputs))
    return variables["params"]


def init_params(module: nn.Module, rng, **inputs) -> Any:
    """Unboxed float32 parameters (plain arrays); for sharded creation see bert_jax/sharding.py."""
    inputs = inputs or dummy_inputs()
    # jit: op-by-op initialisation of a deep model is many times slower than one compiled call.
    return nn.meta.unbox(jax.jit(module.init)(rng, **inputs)["params"])


def count_params(params) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(params)))


def _layer_keys(encoder: dict) -> list:
    return sorted((k for k in encoder if k.startswith("layer_")), key=lambda k: int(k.split("_")[1]))


def scan_params(params: dict) -> dict:
    """Canonical tree (encoder/layer_N) -> scanned tree (encoder/layer with a leading layers axis)."""
    return _map_encoder(params, lambda enc: {"layer": jax.tree.map(lambda *xs: jnp.stack(xs),
                                                                   *[enc[k] for k in _layer_keys(enc)])})


def unscan_params(params: dict) -> dict:
    """Scanned tree -> canonical tree with one `layer_N` per layer."""
    def unstack(enc):
        stacked = enc["layer"]
        n = jax.tree.leaves(stacked)[0].shape[0]
        return {f"layer_{i}": jax.tree.map(lambda x: x[i], stacked) for i in range(n)}

    return _map_encoder(params, unstack)


def _map_encoder(params: dict, fn) -> dict:
    """Apply `fn` to the `encoder` subtree wherever it sits (under `bert`, or at the top for BertModel)."""
    out = {}
    for k, v in params.items():
        if k == "encoder":
            out[k] = fn(v)
        elif isinstance(v, dict):
            out[k] = _map_encoder(v, fn)
        else:
            out[k] = v
    return out


def is_scanned(params: dict) -> bool:
    found = []
    _map_encoder(params, lambda enc: found.append("layer" in enc) or enc)
    return bool(found) and found[0]
