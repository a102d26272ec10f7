"""Number encodings: round trips, range checks, shapes and dtypes (docs/architecture.md, "Numbers")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffcomp


@pytest.mark.parametrize("base", [1, 2, 5, 128, 1024])
def test_unit_round_trip(base, generator):
    enc = diffcomp.encoding("unit", base=base)
    values = torch.randint(0, base, (3, 7), generator=generator)
    x = enc.encode(values)
    assert x.shape == (3, 7, base) and x.dtype == torch.float32
    assert torch.equal(x.sum(-1), torch.ones(3, 7))
    assert torch.equal(enc.decode(x), values)
    assert enc.shape == (base,) and enc.max_value == base - 1 and enc.modulus == base


@pytest.mark.parametrize("bits", [1, 3, 8, 16, 32, 63])
def test_binary_round_trip(bits, generator):
    enc = diffcomp.encoding("binary", bits=bits)
    high = min(2**bits, 2**62)
    values = torch.randint(0, high, (4, 5), generator=generator)
    values[0, 0], values[0, 1] = 0, 2**bits - 1
    x = enc.encode(values, dtype=torch.float64)
    assert x.shape == (4, 5, bits) and x.dtype == torch.float64
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(enc.decode(x), values)


def test_binary_bits_are_least_significant_first():
    enc = diffcomp.encoding("binary", bits=4)
    assert enc.encode([6]).tolist() == [[0.0, 1.0, 1.0, 0.0]]


def test_binary_64_bits_is_exact_for_python_ints():
    enc = diffcomp.encoding("binary", bits=64)
    values = [0, 1, 2**63 - 1, 2**63, 2**64 - 1, 12345678901234567890]
    x = enc.encode(values)
    assert x.shape == (6, 64)
    assert enc.to_ints(x) == values
    with pytest.raises(ValueError, match="holds 0..18446744073709551615; got 18446744073709551616"):
        enc.encode([2**64])


def test_accepts_lists_numpy_and_integer_tensors():
    enc = diffcomp.encoding("unit", base=10)
    expected = enc.encode(torch.tensor([1, 9]))
    assert torch.equal(enc.encode([1, 9]), expected)
    assert torch.equal(enc.encode(np.array([1, 9], dtype=np.int32)), expected)
    assert torch.equal(enc.encode(torch.tensor([1, 9], dtype=torch.int16)), expected)
    assert enc.encode(3).shape == (10,)


@pytest.mark.parametrize("name,options,bad,message", [
    ("unit", {"base": 10}, [10], r"unit\(base=10\) holds 0..9; got 10"),
    ("unit", {"base": 10}, [-1], r"holds 0..9; got -1"),
    ("binary", {"bits": 4}, [16], r"binary\(bits=4\) holds 0..15; got 16"),
    ("binary", {"bits": 4}, [3, -2], r"got -2"),
])
def test_out_of_range_is_an_error_unless_wrapped(name, options, bad, message):
    enc = diffcomp.encoding(name, **options)
    with pytest.raises(ValueError, match=message):
        enc.encode(bad)
    wrapped = enc.decode(enc.encode(bad, wrap=True))
    assert wrapped.tolist() == [v % enc.modulus for v in bad]


@pytest.mark.parametrize("bad", [[1.5], torch.tensor([1.0]), [True], ["3"], torch.tensor([True])])
def test_non_integers_are_rejected(bad):
    enc = diffcomp.encoding("unit", base=10)
    with pytest.raises(ValueError, match="expected integers"):
        enc.encode(bad)


def test_decode_checks_shape_and_dtype():
    enc = diffcomp.encoding("unit", base=10)
    with pytest.raises(ValueError, match=r"has shape \(3, 9\), but unit\(base=10\) expects shape \(\.\.\., 10\)"):
        enc.decode(torch.zeros(3, 9))
    with pytest.raises(ValueError, match="floating-point tensor"):
        enc.decode(torch.zeros(3, 10, dtype=torch.int64))
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        enc.decode([[0.0] * 10])
    with pytest.raises(ValueError, match="floating-point dtype"):
        enc.encode([1], dtype=torch.int64)


@pytest.mark.parametrize("name,options,message", [
    ("unit", {"base": 0}, "base must be a positive integer, got 0"),
    ("unit", {"base": 2.0}, "base must be a positive integer, got 2.0"),
    ("unit", {"base": True}, "base must be a positive integer, got True"),
    ("binary", {"bits": -3}, "bits must be a positive integer, got -3"),
    ("binary", {"bits": 65}, "bits must be at most 64"),
    ("unit", {"bse": 3}, r"encoding 'unit' has no option 'bse' \(did you mean 'base'\?\); its options: base"),
    ("unit", {}, "encoding 'unit' needs the option"),
])
def test_bad_options(name, options, message):
    with pytest.raises(ValueError, match=message):
        diffcomp.encoding(name, **options)


def test_unknown_encoding_lists_registered_names():
    with pytest.raises(LookupError, match=r"unknown encoding 'unitt' \(did you mean 'unit'\?\); registered encodings: .*binary.*unit"):
        diffcomp.encoding("unitt", base=3)


def test_decode_soft_inputs_takes_most_likely_value():
    unit = diffcomp.encoding("unit", base=4)
    assert unit.decode(torch.tensor([[0.1, 0.2, 0.6, 0.1]])).tolist() == [2]
    binary = diffcomp.encoding("binary", bits=3)
    assert binary.decode(torch.tensor([[0.9, 0.2, 0.7]])).tolist() == [5]


def test_equality_and_hash():
    a, b = diffcomp.encoding("unit", base=8), diffcomp.encoding("unit", base=8)
    assert a == b and hash(a) == hash(b) and a != diffcomp.encoding("unit", base=9)
    assert a != diffcomp.encoding("binary", bits=3)
    assert repr(a) == "unit(base=8)"
