"""Converters (paper appendix B): brute-force agreement, probabilities kept, gradcheck."""

from __future__ import annotations

import itertools

import pytest
import torch

import diffcomp


def unit(n):
    return diffcomp.encoding("unit", base=n)


def binary(b):
    return diffcomp.encoding("binary", bits=b)


def random_distribution(batch, n, generator, dtype=torch.float64):
    return torch.rand(batch, n, generator=generator, dtype=dtype).softmax(-1)


def brute_unit_to_binary(p, n, bits):
    """P(bit i set) = sum over values k < n with bit i of (k mod 2**bits) set."""
    out = torch.zeros(p.shape[0], bits, dtype=p.dtype)
    for k in range(n):
        for i in range(bits):
            if ((k % 2**bits) >> i) & 1:
                out[:, i] += p[:, k]
    return out


def brute_binary_to_unit(q, bits, n):
    """Enumerate every bit pattern: P(pattern) = prod of independent bits, folded mod n."""
    out = torch.zeros(q.shape[0], n, dtype=q.dtype)
    for pattern in itertools.product([0, 1], repeat=bits):
        value = sum(bit << i for i, bit in enumerate(pattern))
        prob = torch.ones(q.shape[0], dtype=q.dtype)
        for i, bit in enumerate(pattern):
            prob = prob * (q[:, i] if bit else 1 - q[:, i])
        out[:, value % n] += prob
    return out


@pytest.mark.parametrize("n,bits", [(8, 3), (5, 3), (16, 3), (4, 6), (1, 2)])
def test_unit_to_binary_matches_enumeration(n, bits, generator):
    p = random_distribution(6, n, generator)
    q = diffcomp.convert(p, unit(n), binary(bits))
    assert torch.allclose(q, brute_unit_to_binary(p, n, bits))
    assert ((q >= 0) & (q <= 1 + 1e-12)).all()


@pytest.mark.parametrize("bits,n", [(3, 8), (4, 8), (3, 5), (2, 8), (5, 7), (1, 2)])
def test_binary_to_unit_matches_enumeration(bits, n, generator):
    q = torch.rand(6, bits, generator=generator, dtype=torch.float64)
    p = diffcomp.convert(q, binary(bits), unit(n))
    assert torch.allclose(p, brute_binary_to_unit(q, bits, n))
    assert torch.allclose(p.sum(-1), torch.ones(6, dtype=torch.float64))
    assert (p >= 0).all()


def test_binary_to_unit_power_of_two_uses_low_bits_at_any_width(generator):
    q = torch.rand(3, 32, generator=generator, dtype=torch.float64)
    p = diffcomp.convert(q, binary(32), unit(256))
    assert torch.allclose(p, brute_binary_to_unit(q[:, :8], 8, 256))


def test_binary_to_unit_refuses_what_it_cannot_do_exactly():
    with pytest.raises(ValueError, match="not a power of two"):
        diffcomp.convert(torch.rand(1, 32), binary(32), unit(100))


@pytest.mark.parametrize("n,m", [(5, 8), (8, 5), (12, 4), (7, 7)])
def test_unit_resize_folds_mod_target(n, m, generator):
    p = random_distribution(4, n, generator)
    out = diffcomp.convert(p, unit(n), unit(m))
    expected = torch.zeros(4, m, dtype=p.dtype)
    for k in range(n):
        expected[:, k % m] += p[:, k]
    assert torch.allclose(out, expected)


def test_binary_resize_zero_extends_or_truncates():
    x = binary(4).encode([13])
    assert binary(8).decode(diffcomp.convert(x, binary(4), binary(8))).tolist() == [13]
    assert binary(2).decode(diffcomp.convert(x, binary(4), binary(2))).tolist() == [13 % 4]


@pytest.mark.parametrize("source,target", [(unit(8), binary(3)), (binary(3), unit(8)), (binary(3), unit(6)),
                                           (unit(6), unit(4)), (binary(3), binary(5))])
def test_one_hot_round_trip_is_exact(source, target):
    values = list(range(min(source.modulus, 8)))
    x = source.encode(values)
    y = diffcomp.convert(x, source, target)
    assert target.decode(y).tolist() == [v % target.modulus for v in values]
    assert set(y.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("source,target", [(unit(6), binary(3)), (binary(3), unit(8)), (binary(3), unit(5)),
                                           (unit(6), unit(4))])
def test_gradcheck(source, target, generator):
    if source.kind == "unit":
        x = random_distribution(3, source.modulus, generator)
    else:
        x = torch.rand(3, *source.shape, generator=generator, dtype=torch.float64)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: diffcomp.convert(t, source, target), (x,))


def test_identity_conversion_returns_input():
    x = unit(4).encode([1])
    assert diffcomp.convert(x, unit(4), unit(4)) is x


def test_convert_checks_the_input_shape():
    with pytest.raises(ValueError, match=r"convert\(\) input has shape \(2, 5\), but unit\(base=4\) expects"):
        diffcomp.convert(torch.zeros(2, 5), unit(4), binary(2))
