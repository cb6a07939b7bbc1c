"""The Flax model against Hugging Face's PyTorch BERT (the independent numerical reference), plus the model's own
structural promises: gathered MLM head, parameter counts without allocation, bf16 compute, scan/remat layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from bert_jax import heads, model
from bert_jax.convert import config_to_hf, params_from_hf_state_dict

TOL = 1e-4

# Three shapes that differ in depth, width, heads and FFN width (intermediate deliberately not 4H in one).
SIZES = {
    "L2_H128_A2": dict(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),
    "L4_H256_A4": dict(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024),
    "L3_H96_A3_I200": dict(num_layers=3, hidden_size=96, num_heads=3, intermediate_size=200),
}


def make_config(size, gelu="erf", **kw):
    return model.BertConfig(vocab_size=211, max_position_embeddings=40, hidden_dropout_rate=0.0,
                            attention_dropout_rate=0.0, gelu=gelu, **SIZES[size], **kw)


def perturbed(hf_model, seed=0):
    """HF initialises biases to 0 and LayerNorm to 1/0: perturb every tensor so a mis-mapped bias or LayerNorm
    cannot hide behind its initial value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf_model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return hf_model.eval()


def hf_model_for(cls, config, **kw):
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(**config_to_hf(config), **kw)
    return perturbed(cls._from_config(hf_config, attn_implementation="eager"))


def state_dict(hf_model):
    return {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}


def inputs(batch=3, length=16, vocab=211, seed=1):
    """Random ids with real padding (different lengths per row) and both token types."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(batch, length))
    lengths = np.linspace(length, length // 2, batch).astype(int)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    types = (np.arange(length)[None, :] >= (lengths // 2)[:, None]).astype(np.int64) * mask
    ids = ids * mask
    return ids, mask, types


def torch_inputs(ids, mask, types):
    return dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))


def jax_inputs(ids, mask, types):
    return dict(input_ids=jnp.asarray(ids, jnp.int32), attention_mask=jnp.asarray(mask, jnp.int32),
                token_type_ids=jnp.asarray(types, jnp.int32))


def assert_close(ours, theirs, tol=TOL, what=""):
    ours, theirs = np.asarray(ours, np.float32), np.asarray(theirs, np.float32)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs {theirs.shape}"
    err = np.max(np.abs(ours - theirs))
    assert err < tol, f"{what}: max abs diff {err:.3g} >= {tol}"


# ------------------------------------------------------------------------------------------------------------------
# Parity with Hugging Face
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gelu", ["erf", "tanh"])
@pytest.mark.parametrize("size", list(SIZES))
def test_pretraining_model_matches_hugging_face(size, gelu):
    config = make_config(size, gelu)
    hf = hf_model_for(transformers.BertForPreTraining, config)
    params = params_from_hf_state_dict(state_dict(hf), config)
    ids, mask, types = inputs()

    ours = model.BertForPreTraining(config).apply({"params": params}, **jax_inputs(ids, mask, types))
    with torch.no_grad():
        theirs = hf(**torch_inputs(ids, mask, types))
        base = hf.bert(**torch_inputs(ids, mask, types))

    assert_close(ours["mlm_logits"], theirs.prediction_logits, what="MLM logits")
    assert_close(ours["nsp_logits"], theirs.seq_relationship_logits, what="NSP logits")
    assert_close(ours["sequence_output"], base.last_hidden_state, what="sequence output")
    assert_close(ours["pooled_output"], base.pooler_output, what="pooled output")


HEADS = [
    ("sequence_classification", transformers.BertForSequenceClassification, dict(num_labels=3),
     lambda c: heads.BertForSequenceClassification(c, num_labels=3), lambda o: o.logits),
    ("regression", transformers.BertForSequenceClassification, dict(num_labels=1),
     lambda c: heads.BertForSequenceClassification(c, num_labels=1), lambda o: o.logits),
    ("token_classification", transformers.BertForTokenClassification, dict(num_labels=5),
     lambda c: heads.BertForTokenClassification(c, num_labels=5), lambda o: o.logits),
    ("question_answering", transformers.BertForQuestionAnswering, {},
     lambda c: heads.BertForQuestionAnswering(c), lambda o: (o.start_logits, o.end_logits)),
]


@pytest.mark.parametrize("gelu", ["erf", "tanh"])
@pytest.mark.parametrize("name,hf_cls,hf_kw,ours_fn,hf_out", HEADS, ids=[h[0] for h in HEADS])
def test_finetuning_heads_match_hugging_face(name, hf_cls, hf_kw, ours_fn, hf_out, gelu):
    config = make_config("L2_H128_A2", gelu)
    hf = hf_model_for(hf_cls, config, **hf_kw)
    params = params_from_hf_state_dict(state_dict(hf), config)
    ids, mask, types = inputs()
    ours = ours_fn(config).apply({"params": params}, **jax_inputs(ids, mask, types))
    with torch.no_grad():
        theirs = hf_out(hf(**torch_inputs(ids, mask, types)))
    for o, t in zip(jax.tree.leaves(ours), theirs if isinstance(theirs, tuple) else (theirs,)):
        assert_close(o, t, what=name)


def test_multiple_choice_head_matches_hugging_face():
    config = make_config("L2_H128_A2")
    hf = hf_model_for(transformers.BertForMultipleChoice, config)
    params = params_from_hf_state_dict(state_dict(hf), config)
    ids, mask, types = (x.reshape(2, 3, 8) for x in inputs(batch=6, length=8))
    ours = heads.BertForMultipleChoice(config).apply({"params": params}, **jax_inputs(ids, mask, types))
    with torch.no_grad():
        theirs = hf(**torch_inputs(ids, mask, types)).logits
    assert ours.shape == (2, 3)
    assert_close(ours, theirs, what="multiple choice logits")


def test_head_init_follows_the_original():
    """Fresh heads: kernels ~ truncated normal(0.02) (|w| <= 0.04, std ~0.0176), biases zero."""
    config = model.BertConfig.from_size("mini", vocab_size=300)
    params = model.init_params(heads.BertForSequenceClassification(config, num_labels=4), jax.random.PRNGKey(3))
    kernel = np.asarray(params["classifier"]["kernel"])
    assert kernel.shape == (256, 4)
    assert np.all(params["classifier"]["bias"] == 0)
    assert np.max(np.abs(kernel)) <= 0.04 + 1e-7
    word = np.asarray(params["bert"]["embeddings"]["word_embeddings"])
    # std of N(0, 0.02) truncated at 2 sigma without rescaling: 0.02 * 0.8796.
    assert abs(word.std() - 0.02 * 0.8796) < 0.0005
    assert np.all(params["bert"]["embeddings"]["LayerNorm"]["scale"] == 1)


# ------------------------------------------------------------------------------------------------------------------
# The model's own promises
# ------------------------------------------------------------------------------------------------------------------


def test_gathered_mlm_head_equals_full_sequence_head_at_those_positions():
    config = make_config("L2_H128_A2")
    m = model.BertForPreTraining(config)
    params = model.init_params(m, jax.random.PRNGKey(0))
    ids, mask, types = inputs()
    positions = jnp.asarray([[1, 4, 7, 0], [2, 3, 5, 0], [0, 6, 7, 1]], jnp.int32)
    full = m.apply({"params": params}, **jax_inputs(ids, mask, types))
    gathered = m.apply({"params": params}, **jax_inputs(ids, mask, types), masked_lm_positions=positions)
    expected = np.take_along_axis(np.asarray(full["mlm_logits"]), np.asarray(positions)[..., None], axis=1)
    assert gathered["mlm_logits"].shape == (3, 4, config.vocab_size)
    np.testing.assert_allclose(gathered["mlm_logits"], expected, atol=1e-5)
    np.testing.assert_allclose(gathered["nsp_logits"], full["nsp_logits"], atol=1e-6)


@pytest.mark.parametrize("size,low,high", [("base", 109e6, 111e6), ("large", 335e6, 340e6)])
def test_parameter_counts_without_allocation(size, low, high):
    # Published: BERT-base 110M, BERT-large 340M (the pretraining heads add the transform and the output bias).
    abstract = model.abstract_params(model.BertForPreTraining(model.BertConfig.from_size(size)))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
    assert low <= model.count_params(abstract) <= high


def test_bfloat16_compute_stays_close_to_float32():
    config = make_config("L4_H256_A4")
    m32, m16 = model.BertForPreTraining(config), model.BertForPreTraining(config.replace(dtype="bfloat16"))
    hf = hf_model_for(transformers.BertForPreTraining, config)  # trained-like, non-trivial weights
    params = params_from_hf_state_dict(state_dict(hf), config)
    ids, mask, types = inputs()
    out32 = m32.apply({"params": params}, **jax_inputs(ids, mask, types))
    out16 = m16.apply({"params": params}, **jax_inputs(ids, mask, types))
    assert out16["sequence_output"].dtype == jnp.bfloat16
    assert jax.tree.leaves(params)[0].dtype == jnp.float32  # params stay float32
    for key in ("mlm_logits", "nsp_logits", "sequence_output", "pooled_output"):
        a = np.asarray(out16[key], np.float32)
        b = np.asarray(out32[key], np.float32)
        rel = np.linalg.norm(a - b) / np.linalg.norm(b)
        assert rel < 2e-2, f"{key}: relative error {rel:.3g}"


def test_scanned_layers_compute_the_same_function():
    config = make_config("L2_H128_A2")
    params = model.init_params(model.BertForPreTraining(config), jax.random.PRNGKey(0))
    scanned = model.scan_params(params)
    assert model.is_scanned(scanned) and not model.is_scanned(params)
    assert scanned["bert"]["encoder"]["layer"]["attention"]["self"]["query"]["kernel"].shape == (2, 128, 128)
    batch = jax_inputs(*inputs())
    a = model.BertForPreTraining(config).apply({"params": params}, **batch)
    b = model.BertForPreTraining(config.replace(scan_layers=True)).apply({"params": scanned}, **batch)
    np.testing.assert_allclose(a["mlm_logits"], b["mlm_logits"], atol=1e-5)
    roundtrip = model.unscan_params(scanned)
    jax.tree.map(np.testing.assert_array_equal, roundtrip, params)


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_changes_memory_not_gradients(policy):
    config = make_config("L2_H128_A2")
    params = model.init_params(model.BertForPreTraining(config), jax.random.PRNGKey(0))
    batch = jax_inputs(*inputs())

    def grads(cfg, p):
        def loss(p):
            out = model.BertForPreTraining(cfg).apply({"params": p}, **batch)
            return jnp.mean(out["mlm_logits"] ** 2) + jnp.mean(out["nsp_logits"] ** 2)
        return jax.jit(jax.grad(loss))(p)

    reference = grads(config, params)
    # Every policy unscanned; the scanned layout once (remat inside nn.scan takes another code path).
    for scan in (False, True) if policy == "dots" else (False,):
        cfg = config.replace(remat_policy=policy, scan_layers=scan)
        g = grads(cfg, model.scan_params(params) if scan else params)
        g = model.unscan_params(g) if scan else g
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-5), g, reference)


def test_attention_implementations_agree_and_dropout_is_applied():
    config = make_config("L2_H128_A2").replace(attention_dropout_rate=0.1, hidden_dropout_rate=0.1)
    params = model.init_params(model.BertForPreTraining(config), jax.random.PRNGKey(0))
    batch = jax_inputs(*inputs())
    outs = {impl: model.BertForPreTraining(config.replace(attention_impl=impl)).apply({"params": params}, **batch)
            for impl in ("auto", "xla", "explicit")}
    np.testing.assert_allclose(outs["xla"]["mlm_logits"], outs["explicit"]["mlm_logits"], atol=1e-5)
    np.testing.assert_allclose(outs["auto"]["mlm_logits"], outs["explicit"]["mlm_logits"], atol=1e-5)

    m = model.BertForPreTraining(config)
    train = lambda seed: m.apply({"params": params}, **batch, deterministic=False,
                                 rngs={"dropout": jax.random.PRNGKey(seed)})["mlm_logits"]
    np.testing.assert_array_equal(train(1), train(1))  # reproducible from the rng
    assert np.max(np.abs(train(1) - train(2))) > 1e-3  # and actually random
    assert np.max(np.abs(train(1) - outs["auto"]["mlm_logits"])) > 1e-3
    # The fused primitive cannot drop attention probabilities: asking for it with dropout on is an error.
    with pytest.raises(ValueError, match="attention_impl='xla' cannot apply attention dropout"):
        model.BertForPreTraining(config.replace(attention_impl="xla")).apply(
            {"params": params}, **batch, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})


def test_bad_model_inputs_and_configs_are_clear_errors():
    config = make_config("L2_H128_A2")
    m = model.BertForPreTraining(config)
    params = model.init_params(m, jax.random.PRNGKey(0))
    too_long = jnp.ones((1, 41), jnp.int32)
    with pytest.raises(ValueError, match="sequence length 41 exceeds the model's max_position_embeddings=40"):
        m.apply({"params": params}, too_long)
    with pytest.raises(ValueError, match=r"BertConfig.hidden_size=100: must be divisible by num_heads=3"):
        model.BertConfig(hidden_size=100, num_heads=3)
    with pytest.raises(ValueError, match="BertConfig.gelu='relu'"):
        model.BertConfig(gelu="relu")
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        model.BertConfig.from_size("huge")
    with pytest.raises(ValueError, match=r"unknown BertConfig keys \['hidden'\]"):
        model.BertConfig.from_dict({"hidden": 3})
