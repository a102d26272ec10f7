"""``choice = "chains"``: one classifier over whole chains instead of one per chain step.

Checked against the per-step choices it generalises (a distribution over
chains that is the product of per-step ones trains exactly as they do), in
float64 by ``gradcheck``, exactly on one-hot choices, and on its errors.
"""

from __future__ import annotations

import pytest
import torch

from diffcomp.model.computer import MachineComputer
from reference_machine import one_thread  # noqa: F401 (an autouse fixture)
from test_chains import ANSWER, ARG, CELLS, PROGRAMS, _computer, _doubtful, _judged, _varied

N = len(PROGRAMS)


def _joint(logits: torch.Tensor) -> torch.Tensor:
    """``(rows, N ** 2)``: the chains' probabilities when each of two steps is chosen on its own (the first step
    the most significant)."""
    q = logits.softmax(-1)
    return (q[:, 0, :, None] * q[:, 1, None, :]).flatten(1)


def test_a_choice_over_whole_chains_asks_for_one_output_over_every_chain():
    targets = {t.name: t for t in _computer("marginal", samples=4, choice="chains").targets()}
    assert "program" not in targets
    assert (targets["chain"].count, targets["chain"].classes) == (1, N ** 2)
    three = {t.name: t for t in _computer("marginal", steps=3, samples=4, choice="chains").targets()}
    assert (three["chain"].count, three["chain"].classes) == (1, N ** 3)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_each_steps_choice_is_the_marginal_of_the_chains(steps):
    computer = _computer("marginal", steps=steps, samples=4, choice="chains")
    joint = torch.randn(5, N ** steps, generator=torch.Generator().manual_seed(steps)).softmax(-1)
    marginals = computer.step_choices(joint)
    assert marginals.shape == (5, steps, N)
    chains, weight = computer.chains(joint, N ** steps, explore=False)  # every chain, the order of the class doc
    for k in range(steps):
        expected = torch.zeros(5, N, dtype=joint.dtype).scatter_add(1, chains[:, :, k], weight)
        torch.testing.assert_close(marginals[:, k], expected)
    number = sum(chains[..., k] * N ** (steps - 1 - k) for k in range(steps))  # (5, C): each chain's class
    torch.testing.assert_close(weight, joint.gather(1, number))
    with pytest.raises(ValueError, match=f"{N ** steps} classes, got {N ** steps + 1}"):
        computer.step_choices(torch.ones(5, N ** steps + 1))


def test_a_product_over_chains_trains_as_the_choices_per_step():
    """The same questions, choices and random draws: the loss and the gradients in the memory and the per-step
    logits (through the product) are those of choice = 'steps', with the chains' entropy bonus too."""
    results = {}
    for choice in ("steps", "chains"):
        computer = _computer("marginal", samples=4, soft_samples=2, explore=0.1, choice=choice).train()
        memory, logits, readout, inputs, answer = _varied(computer, 3)
        given = inputs(memory, logits, readout)
        if choice == "chains":
            given = {**{k: v for k, v in given.items() if k != "program"}, "chain": _joint(logits).unsqueeze(1)}
        torch.manual_seed(0)
        out, outputs, _ = _judged(computer, given, answer)
        loss = out.loss - computer.explore * computer.entropy
        results[choice] = (out.loss.detach(), computer.entropy.detach(), computer.ran.clone(),
                           *torch.autograd.grad(loss, (memory, logits, readout)))
    steps, chains = results["steps"], results["chains"]
    torch.testing.assert_close(chains[0], steps[0])
    torch.testing.assert_close(chains[1], steps[1])  # the entropy over chains / steps = the mean per step's
    assert torch.equal(chains[2], steps[2])  # the same chains ran soft
    for ours, theirs in zip(chains[3:], steps[3:]):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    assert steps[4].abs().max() > 1e-3  # a gradient in the choice worth comparing


def test_the_choice_over_chains_gradcheck_in_float64():
    computer = _computer("marginal", samples=6, soft_samples=2, choice="chains").train()
    computer.machine.max_steps = 40
    memory, logits, readout, inputs = _doubtful(computer, rows=2, dtype=torch.float64)
    scores = torch.randn(2, 1, N ** 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    scores.requires_grad_()

    def loss(s):
        torch.manual_seed(0)  # the same chains drawn each time
        given = {**{k: v for k, v in inputs(memory.detach(), logits, readout).items() if k != "program"},
                 "chain": s.softmax(-1)}
        return _judged(computer, given, ANSWER)[0].loss

    assert torch.autograd.gradcheck(loss, (scores,), eps=1e-6, atol=1e-5)


def test_a_decided_chain_runs_it_exactly():
    computer = _computer("marginal", samples=4, choice="chains").eval()
    _, logits, readout, inputs = _doubtful(computer)
    enc = computer.encoding
    sort_then_reverse = PROGRAMS.index("insertion_sort") * N + PROGRAMS.index("reverse")
    given = {**{k: v for k, v in inputs(enc.encode([[9, 3, 7, 0, 0]]), logits, readout).items() if k != "program"},
             "chain": torch.nn.functional.one_hot(torch.tensor([[sort_then_reverse]]), N ** 2).float(),
             "readout": torch.tensor([[[1.0, 0.0]]])}
    out = computer(given)
    assert computer.chosen.tolist() == [[PROGRAMS.index("insertion_sort"), PROGRAMS.index("reverse")]]
    assert enc.decode(out["memory"])[0, :4].tolist() == ANSWER[0].tolist()


def test_a_choice_over_chains_is_checked():
    machine = _computer("marginal").machine

    def build(**options):
        return MachineComputer(machine, programs=machine.entry_points, registers=ARG + 1, cells=CELLS, steps=2,
                               arguments=(ARG,), readouts=("memory", "r0"), **options)

    with pytest.raises(ValueError, match=r"choice must be one of \('steps', 'chains'\).*got 'chain'"):
        build(selection="marginal", samples=4, choice="chain")
    for selection in ("mix", "sample"):
        with pytest.raises(ValueError, match="choice = 'chains' .* needs selection = 'marginal'"):
            build(selection=selection, choice="chains")
    assert build(selection="marginal", samples=4).choice == "steps"
