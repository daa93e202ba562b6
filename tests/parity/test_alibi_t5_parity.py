"""Parity of the attention biases with olm (ALiBi) and Hugging Face (T5).

What is proved here:

* ``ALiBiPositionalBias``: for ``q == k`` the bias equals olm's bit for bit (float32, 1..64
  heads, powers of two or not, on NumPy and torch), and so do the slopes. For ``q < k`` (a
  decode step, a prefill chunk) olm slices its buffer from the top-left, so its decode query
  sits at position 0; olm_xp's rows are the last rows of the square bias (the README's
  "Differences from olm").
* T5: the buckets equal Hugging Face's ``T5Attention._relative_position_bucket`` for T5's
  configuration and a sweep of others, except at a few exact boundaries where HF's float32
  ``log`` is one ulp low (listed in :data:`HF_FLOAT32_BOUNDARIES`; olm_xp is exact there).
  With a random table loaded from a ``T5Attention``'s state dict, ``T5RelativePositionBias``
  equals its ``compute_bias`` -- encoder and decoder, with and without ``past_seen_tokens``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

olm = pytest.importorskip("olm")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
olm_positional = pytest.importorskip("olm.nn.embeddings.positional")
modeling_t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
T5Config = pytest.importorskip("transformers").T5Config

from olm_xp import t5_relative_position_bucket  # noqa: E402 - after the importorskip guards
from olm_xp.nn.embeddings.positional import (  # noqa: E402
    ALiBiPositionalBias,
    T5RelativePositionBias,
)

pytestmark = pytest.mark.parity

HF_BUCKET = modeling_t5.T5Attention._relative_position_bucket

# (num_buckets, max_distance, bidirectional) -> the distance where Hugging Face's float32
# ``log(n/e) / log(max_distance/e) * (B - e)`` lands one ulp below the exact integer, so HF's
# bucket is one lower than the exact one. Found by sweeping num_buckets 2..70 and
# max_distance up to 200 (and 256, 300, 512, 1000, 1024, 4096) on torch 2.13 CPU: 6 of about
# 25,700 configurations, none of them T5's (32, 128).
HF_FLOAT32_BOUNDARIES = {
    (34, 27, True): 18,
    (35, 27, True): 18,
    (17, 27, False): 18,
    (48, 81, False): 54,
    (51, 49, False): 35,
    (65, 108, False): 72,
}


# -- ALiBi vs olm -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_alibi_equals_olm_for_square_biases(backend):
    length = 12
    for num_heads in range(1, 65):
        reference = olm_positional.ALiBiPositionalBias(num_heads, max_seq_len=length)
        with torch.no_grad():
            expected = reference(length, length).numpy()
        xp = torch if backend == "torch" else np
        dtype = torch.float32 if backend == "torch" else np.float32
        module = ALiBiPositionalBias(num_heads, max_seq_len=length, xp=xp, dtype=dtype)
        out = module(length, length)
        if backend == "torch":
            assert isinstance(out, torch.Tensor)
            out = out.numpy()
        assert out.dtype == np.float32
        assert out.shape == (1, num_heads, length, length)
        np.testing.assert_array_equal(out, expected, err_msg=f"{num_heads} heads")
        slopes = module.slopes.numpy() if backend == "torch" else module.slopes
        np.testing.assert_array_equal(slopes, reference.slopes.numpy())


def test_alibi_decode_rows_differ_from_olms_top_left_slice():
    """olm's ``forward(1, k)`` is row 0 of its buffer (query at position 0); olm_xp's is the
    last row of the square bias (the newest token), which is what a KV cache needs."""
    reference = olm_positional.ALiBiPositionalBias(4, max_seq_len=16)
    module = ALiBiPositionalBias(4, xp=torch, dtype=torch.float32)
    with torch.no_grad():
        square = reference(10, 10)
        olm_step = reference(1, 10)
    ours = module(1, 10)
    torch.testing.assert_close(ours, square[:, :, -1:, :], rtol=0, atol=0)
    torch.testing.assert_close(olm_step, square[:, :, :1, :], rtol=0, atol=0)
    assert not torch.equal(ours, olm_step)


def test_alibi_holds_no_buffer():
    module = ALiBiPositionalBias(32)  # olm: a (32, 2048, 2048) float32 buffer, 512 MiB
    arrays = [name for name, value in vars(module).items() if isinstance(value, np.ndarray)]
    assert arrays == []
    assert module.state_dict() == {}


# -- T5 vs Hugging Face -----------------------------------------------------------------------


def _hf_buckets(relative: np.ndarray, num_buckets: int, max_distance: int, bidirectional: bool):
    out = HF_BUCKET(
        torch.from_numpy(relative),
        bidirectional=bidirectional,
        num_buckets=num_buckets,
        max_distance=max_distance,
    )
    return out.numpy()


@pytest.mark.parametrize("bidirectional", [True, False], ids=["bidirectional", "causal"])
def test_t5_buckets_equal_hugging_face_at_t5s_configuration(bidirectional):
    relative = np.arange(-5000, 5001)
    for num_buckets, max_distance in [(32, 128), (64, 256), (32, 64), (16, 32)]:
        expected = _hf_buckets(relative, num_buckets, max_distance, bidirectional)
        kwargs = {"num_buckets": num_buckets, "max_distance": max_distance}
        np.testing.assert_array_equal(
            t5_relative_position_bucket(relative, bidirectional=bidirectional, **kwargs), expected
        )
        torch_out = t5_relative_position_bucket(
            torch.from_numpy(relative), bidirectional=bidirectional, **kwargs
        )
        np.testing.assert_array_equal(torch_out.numpy(), expected)


def test_t5_buckets_sweep_against_hugging_face():
    """Every configuration with num_buckets 2..40 and max_distance from just above the exact
    buckets to 140: equal to Hugging Face except at the known float32 boundaries."""
    differences = {}
    compared = 0
    for bidirectional in (True, False):
        for num_buckets in range(4 if bidirectional else 2, 41):
            exact = num_buckets // (4 if bidirectional else 2)
            for max_distance in range(exact + 1, 141):
                relative = np.arange(-2 * max_distance - 3, 2 * max_distance + 4)
                expected = _hf_buckets(relative, num_buckets, max_distance, bidirectional)
                ours = t5_relative_position_bucket(
                    relative,
                    bidirectional=bidirectional,
                    num_buckets=num_buckets,
                    max_distance=max_distance,
                )
                compared += 1
                wrong = np.nonzero(ours != expected)[0]
                if wrong.size:
                    key = (num_buckets, max_distance, bidirectional)
                    differences[key] = (relative[wrong], ours[wrong] - expected[wrong])
    assert compared > 4000
    known = {k: v for k, v in HF_FLOAT32_BOUNDARIES.items() if k[0] <= 40}
    assert set(differences) == set(known)
    for (num_buckets, max_distance, bidirectional), (where, delta) in differences.items():
        distance = known[(num_buckets, max_distance, bidirectional)]
        expected_where = [distance, -distance] if bidirectional else [-distance]
        assert sorted(where.tolist()) == sorted(expected_where)
        assert (delta == 1).all()  # HF's float32 log is one bucket low, never high
        # ... because the exact value is an integer there: (n/e)**L == (max_distance/e)**s.
        per_side = num_buckets // 2 if bidirectional else num_buckets
        e = per_side // 2
        ratio = math.log(distance / e) / math.log(max_distance / e) * (per_side - e)
        assert abs(ratio - round(ratio)) < 1e-12


def _hf_attention(num_buckets: int, max_distance: int, is_decoder: bool, heads: int = 4):
    config = T5Config(
        d_model=16,
        d_kv=4,
        num_heads=heads,
        relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=max_distance,
        is_decoder=is_decoder,
    )
    attention = modeling_t5.T5Attention(config, has_relative_attention_bias=True, layer_idx=0)
    with torch.no_grad():
        attention.relative_attention_bias.weight.normal_(generator=torch.Generator().manual_seed(0))
    return attention


@pytest.mark.parametrize("is_decoder", [False, True], ids=["encoder", "decoder"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_t5_bias_equals_compute_bias(is_decoder, backend):
    attention = _hf_attention(32, 128, is_decoder)
    table = {
        k: v for k, v in attention.state_dict().items() if k.startswith("relative_attention_bias")
    }
    assert list(table) == ["relative_attention_bias.weight"]  # the state-dict key T5 uses
    xp, dtype = (torch, torch.float32) if backend == "torch" else (np, np.float32)
    module = T5RelativePositionBias(4, bidirectional=not is_decoder, xp=xp, dtype=dtype)
    module.load_state_dict(table)
    for seq_len_q, seq_len_k in [(300, 300), (1, 300), (17, 300), (5, 5)]:
        with torch.no_grad():
            expected = attention.compute_bias(
                seq_len_q, seq_len_k, past_seen_tokens=seq_len_k - seq_len_q
            )
        out = module(seq_len_q, seq_len_k)
        out = out.numpy() if backend == "torch" else out
        assert out.shape == (1, 4, seq_len_q, seq_len_k)
        np.testing.assert_array_equal(out, expected.numpy())


def test_t5_bias_at_a_float32_boundary_configuration():
    """Where HF's float32 log is one ulp low, one boundary distance gets a different bucket
    (and so a different table row); every other entry is equal."""
    attention = _hf_attention(34, 27, is_decoder=False)
    module = T5RelativePositionBias(4, num_buckets=34, max_distance=27, xp=torch)
    module.load_state_dict(attention.state_dict(), strict=False)  # q/k/v/o are not ours
    with torch.no_grad():
        expected = attention.compute_bias(40, 40)
    out = module(40, 40)
    differs = (out != expected).any(dim=1)[0]  # (q, k)
    i, j = torch.nonzero(differs, as_tuple=True)
    assert set((j - i).abs().tolist()) == {18}
