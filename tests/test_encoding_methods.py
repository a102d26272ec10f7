"""Encodings answer for themselves what the machine and the model ask of a number (no ``kind`` branches in core)."""

from __future__ import annotations

import pytest
import torch

import diffcomp
from diffcomp.alu import alu as make_alu
from diffcomp.encodings import NumberEncoding, _through_unit
from diffcomp.machine import Machine

UNIT, BINARY, WIDE = (diffcomp.encoding("unit", base=12), diffcomp.encoding("binary", bits=5),
                      diffcomp.encoding("binary", bits=24))


def soft(encoding: NumberEncoding, generator: torch.Generator, batch: int = 6) -> torch.Tensor:
    x = torch.rand(batch, *encoding.shape, generator=generator, dtype=torch.float64)
    return x / x.sum(-1, keepdim=True) if encoding.kind == "unit" else x


@pytest.mark.parametrize("encoding", [UNIT, BINARY, WIDE], ids=str)
@pytest.mark.parametrize("size", [3, 8, 12, 40])
def test_categorical_equals_the_converters_and_its_integer_twin(encoding, size, generator):
    if encoding is UNIT and size > 12:
        size = 12
    x = soft(encoding, generator)
    assert torch.allclose(encoding.categorical(x, size), _through_unit(x, encoding, size))
    values = torch.randint(0, min(encoding.modulus, 1 << 20), (20,), generator=generator)
    sharp = encoding.encode(values, dtype=torch.float64)
    assert torch.equal(encoding.categorical(sharp, size).argmax(-1), encoding.categorical_index(values, size))


@pytest.mark.parametrize("encoding", [UNIT, BINARY], ids=str)
def test_zero_numbers_from_lines_and_decisions(encoding, generator):
    x = soft(encoding, generator)
    assert torch.allclose(encoding.probability_zero(x), _through_unit(x, encoding, encoding.modulus)[..., 0])
    p = torch.rand(4, 7, generator=generator, dtype=torch.float64).softmax(-1)  # over 7 lines
    expected = diffcomp.convert(p, diffcomp.encoding("unit", base=7), encoding)
    assert torch.allclose(encoding.from_categorical(p), expected)
    decided = encoding.decide(x)
    assert encoding.is_decided(decided) and torch.equal(encoding.decode(decided), encoding.decode(x))
    values = encoding.decode(x)
    logp, _ = encoding.log_likelihood(encoding.encode(values, dtype=torch.float64), values)
    assert torch.allclose(logp, torch.zeros_like(logp), atol=1e-6)  # certain of the right answer


def test_the_machine_builds_and_runs_without_a_unit_encoding(fresh_registry):
    for kind, names in (("encoding", ["unit"]), ("converter", ["unit->binary", "binary->unit", "unit->unit"])):
        for name in names:
            fresh_registry._entries[kind].pop(name)
    with pytest.raises(diffcomp.UnknownNameError):
        diffcomp.encoding("unit", base=4)
    alu = make_alu("circuit", bits=4)
    program = diffcomp.assemble("r1 = READ r0\nJEZ r1, out\nCALL f\nWRITE r0, r1\nout: STOP\nf: r1 = ADD r1, 5\nRET")
    machine = Machine(program, alu, cells=3, max_steps=20)
    enc = machine.encoding
    registers, memory = enc.encode([[1], [2]]), enc.encode([[0, 4, 0], [0, 4, 0]])
    with torch.no_grad():
        for exact in (True, False):
            state = machine.run(registers, memory, exact=exact)
            assert enc.to_ints(state.memory) == [[0, 9, 0], [0, 4, 0]]
