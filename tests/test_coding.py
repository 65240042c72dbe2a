"""Coded linear layers: any k of k + r answers give the layer's output (float32, relative error <= 1e-4)."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgesplit.coding import erasure_patterns, make_code, merge_blocks, split_linear, worst_condition

REL_TOL = 1e-4


def _layer(rng, out_features, in_features):
    w = (rng.standard_normal((out_features, in_features)) / np.sqrt(in_features)).astype(np.float32)
    b = rng.standard_normal(out_features).astype(np.float32)
    return w, b


def _answers(blocks, x):
    """What each worker returns: its block's float32 matmul plus bias, (B, rows)."""
    return [x @ w.T + b for w, b in blocks]


@pytest.mark.parametrize("k", range(1, 9))
@pytest.mark.parametrize("r", range(0, 4))
def test_every_erasure_pattern_decodes(k, r):
    rng = np.random.default_rng(k * 10 + r)
    out_features = 8 * k + 3  # not a multiple of k: padding is exercised
    w, b = _layer(rng, out_features, 96)
    x = rng.standard_normal((4, 96)).astype(np.float32)
    want = x.astype(np.float64) @ w.T.astype(np.float64) + b
    code = make_code(k, r)
    answers = _answers(split_linear(w, b, k, code), x)
    worst = 0.0
    for pattern in erasure_patterns(k, r):
        got = merge_blocks(code.decode({i: answers[i] for i in pattern}), out_features)
        worst = max(worst, np.linalg.norm(got - want) / np.linalg.norm(want))
    assert worst <= REL_TOL, (k, r, code.kind, code.worst_condition, worst)


def test_activation_after_decoding_and_fewer_than_k_refused():
    rng = np.random.default_rng(0)
    w, b = _layer(rng, 20, 16)
    x = rng.standard_normal((2, 16)).astype(np.float32)
    code = make_code(4, 2)
    answers = _answers(split_linear(w, b, 4, code), x)
    got = np.maximum(merge_blocks(code.decode({1: answers[1], 2: answers[2], 4: answers[4], 5: answers[5]}), 20), 0)
    assert np.allclose(got, np.maximum(x @ w.T + b, 0), atol=1e-5)
    with pytest.raises(ValueError, match="need 4 of 6"):
        code.decode({0: answers[0], 4: answers[4], 5: answers[5]})


def test_systematic_fast_path_is_exact():
    rng = np.random.default_rng(1)
    w, b = _layer(rng, 12, 8)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    code = make_code(3, 1)
    answers = _answers(split_linear(w, b, 3, code), x)
    assert np.array_equal(merge_blocks(code.decode(dict(enumerate(answers))), 12), x @ w.T + b)


def test_r1_is_the_sum_and_codes_are_mds():
    code = make_code(4, 1)
    assert code.kind == "sum" and np.array_equal(code.parity, np.ones((1, 4)))
    for k, r in itertools.product(range(1, 9), range(1, 4)):
        c = make_code(k, r)
        gen = c.generator
        assert all(np.linalg.matrix_rank(gen[list(p)]) == k for p in erasure_patterns(k, r))
        assert c.worst_condition == pytest.approx(worst_condition(c.parity))


def test_auto_picks_the_best_conditioned_construction():
    auto = make_code(6, 3)
    for kind in ("cauchy", "vandermonde", "gaussian"):
        assert auto.worst_condition <= make_code(6, 3, kind).worst_condition


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 8), r=st.integers(0, 3), batch=st.integers(1, 5), extra_rows=st.integers(0, 7), data=st.data())
def test_decode_property(k, r, batch, extra_rows, data):
    rng = np.random.default_rng(k * 1000 + r * 100 + batch)
    out_features = k + extra_rows
    w, b = _layer(rng, out_features, 24)
    x = rng.standard_normal((batch, 24)).astype(np.float32)
    code = make_code(k, r)
    answers = _answers(split_linear(w, b, k, code), x)
    # any subset of at least k answers (more than k: least squares over all of them)
    size = data.draw(st.integers(k, k + r))
    chosen = data.draw(st.permutations(range(k + r))).__getitem__(slice(0, size))
    got = merge_blocks(code.decode({i: answers[i] for i in chosen}), out_features)
    want = x.astype(np.float64) @ w.T.astype(np.float64) + b
    assert np.linalg.norm(got - want) <= REL_TOL * np.linalg.norm(want)
