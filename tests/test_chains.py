"""Chains in the model: the machine computer's program choices (mixed or drawn), the learned readout.

The drawn choices' score-function gradient is checked against the exact
expectation (every chain enumerated); the readout's loss against the mixture
over whole answers; and a small learning test: per-kind choice logits learn,
from answers alone, which chain and which readout each kind of question needs.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import diffcomp
from diffcomp.machine import Machine
from diffcomp.machine.chain import library
from diffcomp.model.computer import MachineComputer
from diffcomp.model.heads import ChosenReadout, answer_nll, mixture_output
from reference_machine import one_thread  # noqa: F401 (an autouse fixture)

BASE, CELLS, ARG = 64, 5, 6
PROGRAMS = ("insertion_sort", "reverse", "max", "identity")


def _computer(selection: str, steps: int = 2, samples: int = 1, **options) -> MachineComputer:
    machine = Machine(library(*PROGRAMS), diffcomp.alu("lookup", base=BASE), cells=CELLS, max_steps=120,
                      registers=ARG + 1)
    return MachineComputer(machine, programs=machine.entry_points, registers=machine.n_registers, cells=CELLS,
                           steps=steps, arguments=(ARG,), selection=selection, readouts=("memory", "r0"),
                           samples=samples, **options)


def _inputs(rows: int, logits: torch.Tensor, readout: torch.Tensor) -> dict[str, torch.Tensor]:
    enc = diffcomp.encoding("unit", base=BASE)
    memory = enc.encode([[9, 3, 7, 0, 0]] * rows)  # (rows, cells, base)
    return {"memory": memory, "registers": enc.encode([[0]] * rows), "program": logits.softmax(-1).expand(rows, -1, -1),
            "readout": readout.softmax(-1).expand(rows, -1, -1)}


ANSWER = torch.tensor([[9, 7, 3, 0]])  # the string sorted descending: sort, then reverse, read from memory


def _loss(computer: MachineComputer, inputs: dict[str, torch.Tensor], answer: torch.Tensor):
    head = ChosenReadout(computer.readouts, computer.encoding, answer.shape[1])
    candidates, weights = head.candidates(computer(inputs))
    rows = len(candidates) // computer.drawn
    return mixture_output(candidates, weights, answer.expand(rows, -1), computer.encoding, log_q=computer.log_q,
                          samples=computer.drawn)


def test_targets_ask_for_a_program_per_step_the_arguments_and_a_readout():
    targets = {t.name: t for t in _computer("mix").targets()}
    assert (targets["program"].count, targets["program"].classes) == (2, len(PROGRAMS))
    assert targets["registers"].count == 1  # only the argument register
    assert targets["readout"].classes == 2


def test_a_one_hot_choice_runs_the_chain_exactly_and_reads_the_chosen_place():
    computer = _computer("mix").eval()
    logits = torch.full((1, 2, 4), -1e4)
    logits[0, 0, 0] = logits[0, 1, 1] = 0  # sort, then reverse
    out = _loss(computer, _inputs(1, logits, torch.tensor([[[0.0, -1e4]]])), ANSWER)
    assert bool(out.correct.all()) and out.prediction.tolist() == ANSWER.tolist()
    assert float(out.loss) < 1e-3


def test_the_readout_scores_the_mixture_of_whole_answers():
    enc = diffcomp.encoding("unit", base=8)
    a = enc.encode([[[1, 2]], [[3, 0]]]).transpose(0, 1)  # (batch 1, places 2, length 2, base)
    w = torch.tensor([[0.25, 0.75]])
    out = mixture_output(a, w, torch.tensor([[3, 0]]), enc)
    assert torch.isclose(out.loss, -torch.log(torch.tensor(0.75)), atol=1e-5)
    assert out.prediction.tolist() == [[3, 0]]
    mixed_per_number = (w[:, :, None, None] * a).sum(1)  # what a per-number mixture would have said
    assert answer_nll(mixed_per_number, torch.tensor([[3, 0]]), enc)[0] > out.loss


def _exact_expected_loss(computer: MachineComputer, logits: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
    q = logits.softmax(-1)[0]  # (steps, programs)
    total = 0.0
    computer.eval()
    for chain in itertools.product(range(len(PROGRAMS)), repeat=2):
        one = torch.nn.functional.one_hot(torch.tensor(chain), len(PROGRAMS)).float().unsqueeze(0)
        inputs = _inputs(1, torch.log(one.clamp_min(1e-30)), readout)
        with torch.no_grad():
            nll = _loss(computer, inputs, ANSWER).loss
        total = total + q[0, chain[0]] * q[1, chain[1]] * nll
    computer.train()
    return total


@pytest.mark.slow
@pytest.mark.parametrize("samples", [1, 4])
def test_drawn_programs_give_an_unbiased_gradient_of_the_expected_loss(samples):
    """One draw per question (the batch's other questions give the baseline), or four (the same question's)."""
    computer = _computer("sample", samples=samples)
    torch.manual_seed(0)
    logits = (0.3 * torch.randn(1, 2, len(PROGRAMS))).requires_grad_()
    readout = torch.tensor([[[0.5, 0.0]]])
    exact = torch.autograd.grad(_exact_expected_loss(computer, logits, readout), logits)[0]
    computer.train()
    estimates = []
    for _ in range(6):
        out = _loss(computer, _inputs(512 // samples, logits, readout), ANSWER)
        estimates.append(torch.autograd.grad(out.loss, logits)[0])
    estimates = torch.stack(estimates)
    mean, stderr = estimates.mean(0), estimates.std(0) / len(estimates) ** 0.5
    assert exact.abs().max() > 0.5  # a gradient worth estimating
    assert torch.all((mean - exact).abs() < 4 * stderr + 0.05 * exact.abs().max()), (mean, exact, stderr)


def test_drawn_programs_run_only_what_was_drawn_and_log_its_probability():
    computer = _computer("sample").train()
    logits = torch.log(torch.tensor([[[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]]).clamp_min(1e-30))
    computer(_inputs(64, logits, torch.zeros(1, 1, 2)))
    assert set(computer.chosen[:, 0].tolist()) <= {0, 1} and set(computer.chosen[:, 1].tolist()) == {3}
    assert torch.allclose(computer.log_q, torch.log(torch.tensor(0.5)), atol=1e-5)
    computer.eval()
    computer(_inputs(2, logits, torch.zeros(1, 1, 2)))
    assert computer.log_q is None  # evaluation draws nothing


def _learn_two_kinds(selection: str, loss, *, steps: int, doubt: float = 0.0, judge: bool = False,
                     **options) -> tuple[list, torch.Tensor]:
    """Two kinds of question on the same strings: 'sort descending' (sort, then reverse; read memory) and
    'largest' (max; read r0); per-kind logits over two chain steps and the readout place learn from ``loss(head,
    computer, outputs, answers)``, the computer told which runs answer right if ``judge`` (as a model tells it).
    The chains chosen (identity left out) and the readout logits."""
    import functools

    from diffcomp.model.heads import right_chains

    computer = _computer(selection, samples=2, **options).train()
    enc = computer.encoding
    strings = [[9, 3, 7], [4, 8, 2], [5, 1, 6], [2, 9, 4]]
    memory = enc.encode([s + [0, 0] for s in strings] * 2) * (1 - doubt) + doubt / BASE
    kind = torch.tensor([0] * 4 + [1] * 4)
    answers = torch.tensor([sorted(s, reverse=True) + [0] for s in strings] + [[max(s), 0, 0, 0] for s in strings])
    logits = torch.zeros(2, 2, len(PROGRAMS), requires_grad=True)
    readout = torch.zeros(2, 1, 2, requires_grad=True)
    optimizer = torch.optim.Adam([logits, readout], lr=0.1)
    head = ChosenReadout(computer.readouts, enc, 4)
    for _ in range(steps):
        inputs = {"memory": memory, "registers": enc.encode([[0]] * 8), "program": logits.softmax(-1)[kind],
                  "readout": readout.softmax(-1)[kind]}
        right = functools.partial(right_chains, head, answer=answers, encoding=enc) if judge else None
        out = loss(head, computer, computer(inputs, right=right), answers)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    return [[PROGRAMS[i] for i in row if PROGRAMS[i] != "identity"] for row in logits.argmax(-1).tolist()], readout


def _assert_learned(chosen: list, readout: torch.Tensor) -> None:
    assert chosen[0] == ["insertion_sort", "reverse"]
    assert chosen[1][-1] == "max" and set(chosen[1]) <= {"insertion_sort", "reverse", "max"}  # same max in any order
    assert readout.argmax(-1).flatten().tolist() == [0, 1]  # memory, then r0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_choices_learn_each_kind_of_question_from_answers_alone(seed):
    """Per-kind logits learn both kinds from drawn chains and the readout mixture."""
    def loss(head, computer, outputs, answers):
        candidates, weights = head.candidates(outputs)
        return mixture_output(candidates, weights, answers, computer.encoding, log_q=computer.log_q,
                              samples=computer.drawn)

    torch.manual_seed(seed)
    _assert_learned(*_learn_two_kinds("sample", loss, steps=150))


def test_drawn_programs_run_alone_and_agree_with_the_whole_library_on_one_hot_inputs():
    computer = _computer("sample").eval()
    enc = computer.encoding
    names = [("insertion_sort", "reverse"), ("max", "identity"), ("reverse", "max"), ("identity", "identity")]
    index = {n: k for k, n in enumerate(computer.programs)}
    one = torch.nn.functional.one_hot(torch.tensor([[index[a], index[b]] for a, b in names]), len(PROGRAMS)).float()
    memory = enc.encode([[9, 3, 7, 0, 0], [4, 8, 2, 0, 0], [5, 1, 0, 0, 0], [6, 0, 0, 0, 0]])
    inputs = {"memory": memory, "registers": enc.encode([[0]] * 4), "program": one,
              "readout": torch.ones(4, 1, 2) / 2}
    with torch.no_grad():
        alone = computer(inputs)  # one machine per program, rows grouped by program
    assert computer._singles  # the small machines ran
    from diffcomp.machine.chain import run_chain

    whole = run_chain(computer.machine, computer._registers(inputs, memory), memory, one)
    torch.testing.assert_close(alone["memory"], whole.memory)
    torch.testing.assert_close(alone["registers"], whole.registers)
    assert enc.decode(alone["memory"])[0, :3].tolist() == [9, 7, 3]
    assert enc.decode(alone["registers"])[1:3, 0].tolist() == [8, 5]


def test_explore_takes_the_choices_entropy_off_the_loss_in_training_only():
    computer = _computer("sample")
    computer.explore = 0.5
    logits = torch.zeros(1, 2, len(PROGRAMS), requires_grad=True)
    computer.train()
    computer(_inputs(2, logits, torch.zeros(1, 1, 2)))
    assert torch.isclose(computer.entropy, torch.log(torch.tensor(float(len(PROGRAMS)))))
    computer.eval()
    computer(_inputs(2, logits, torch.zeros(1, 1, 2)))
    assert computer.entropy is None
    with pytest.raises(ValueError, match="explore"):
        MachineComputer(computer.machine, programs=computer.programs, registers=7, cells=CELLS, explore=-1)


# -- selection = "marginal": the answer's probability over each question's chains --------------------------------

def _marginal_loss(computer: MachineComputer, inputs: dict[str, torch.Tensor], answer: torch.Tensor):
    from diffcomp.model.heads import marginal_output

    head = ChosenReadout(computer.readouts, computer.encoding, answer.shape[1])
    outputs = computer(inputs)
    return marginal_output(head, outputs, answer.expand(len(outputs["weight"]) // computer.drawn, -1),
                           computer.encoding, chains=computer.drawn)


def test_marginal_ranks_chains_the_most_likely_first_then_explores_the_rest():
    computer = _computer("marginal", samples=4)
    q = torch.tensor([[[0.7, 0.1, 0.1, 0.1], [0.1, 0.2, 0.1, 0.6]]])  # (1, steps, programs)
    chains, weight = computer.chains(q, 4, explore=False)
    assert chains[0, :2].tolist() == [[0, 3], [0, 1]]  # 0.42, then 0.14 (ties after)
    assert torch.allclose(weight[0, :2], torch.tensor([0.42, 0.14]))
    torch.manual_seed(0)
    drawn = {tuple(map(tuple, computer.chains(q, 4, explore=True)[0][0].tolist())) for _ in range(20)}
    assert all(d[:2] == ((0, 3), (0, 1)) for d in drawn) and len(drawn) > 1  # the rest vary
    assert all(len(set(d)) == 4 for d in drawn)  # no chain twice
    every, w = computer.chains(q, 100, explore=True)
    assert every.shape[1] == 16 and torch.isclose(w.sum(), torch.tensor(1.0))


def test_marginal_with_every_chain_is_the_exact_expectation_of_the_answer():
    """P(answer) = sum over chains of pi(chain) P_chain(answer): against each chain run alone, value and gradient
    in the memory; the decided runs' loss adds -log P(a right chain) in training."""
    torch.manual_seed(0)
    computer = _computer("marginal", samples=16).eval()  # 4 programs, 2 steps: every chain
    logits = 0.5 * torch.randn(1, 2, len(PROGRAMS))
    readout = torch.tensor([[[0.3, 0.0]]])
    enc = computer.encoding
    soft = (enc.encode([[9, 3, 7, 0, 0]]) * 0.9 + 0.1 / BASE).requires_grad_()  # a memory in doubt

    def inputs(memory, program):
        return {"memory": memory, "registers": enc.encode([[0]]), "program": program,
                "readout": readout.softmax(-1)}

    out = _marginal_loss(computer, inputs(soft, logits.softmax(-1)), ANSWER)
    grad = torch.autograd.grad(out.loss, soft)[0]
    q, w = logits.softmax(-1)[0], readout.softmax(-1)[0, 0]
    head = ChosenReadout(computer.readouts, enc, ANSWER.shape[1])
    chains = torch.tensor(list(itertools.product(range(len(PROGRAMS)), repeat=2)))  # (16, 2)
    one = torch.nn.functional.one_hot(chains, len(PROGRAMS)).float()
    computer.selection = "mix"  # a one-hot choice runs each chain alone (one batch, as the marginal's rows)
    rows = {"memory": soft.expand(16, -1, -1), "registers": enc.encode([[0]] * 16), "program": one,
            "readout": readout.softmax(-1).expand(16, -1, -1)}
    candidates, _ = head.candidates(computer(rows))
    computer.selection = "marginal"
    nll = torch.stack([answer_nll(candidates[:, c], ANSWER.expand(16, -1), enc)[0] for c in range(2)], 1)
    p = (q[0, chains[:, 0]] * q[1, chains[:, 1]] * (w * torch.exp(-nll)).sum(1)).sum()
    exact = -torch.log(p)
    assert torch.isclose(out.loss, exact, rtol=1e-4)
    torch.testing.assert_close(grad, torch.autograd.grad(exact, soft)[0], rtol=1e-3, atol=1e-5)


def test_right_choice_loss_is_minus_log_the_weight_on_right_answers():
    from diffcomp.model.heads import right_choice_loss

    enc = diffcomp.encoding("unit", base=8)
    candidates = enc.encode([[[1, 2], [3, 0], [3, 0]], [[5, 5], [6, 6], [7, 7]]])  # (batch 2, choices 3, length 2, 8)
    weights = torch.tensor([[0.5, 0.2, 0.3], [0.2, 0.3, 0.5]], dtype=torch.float64, requires_grad=True)
    answer = torch.tensor([[3, 0], [1, 1]])  # the second question: no right choice, no loss
    loss = right_choice_loss(candidates, weights, answer, enc)
    assert torch.isclose(loss, -torch.log(torch.tensor(0.5, dtype=torch.float64)) / 2)
    assert torch.autograd.gradcheck(lambda w: right_choice_loss(candidates, w, answer, enc), (weights,))


def test_marginal_training_runs_every_chain_on_the_decided_parse_and_credits_the_right_ones():
    computer = _computer("marginal", samples=4).train()
    logits = torch.zeros(1, 2, len(PROGRAMS), requires_grad=True)
    enc = computer.encoding
    soft = enc.encode([[9, 3, 7, 0, 0]]) * 0.8 + 0.2 / BASE  # decided: 9 3 7
    inputs = {"memory": soft, "registers": enc.encode([[0]]), "program": logits.softmax(-1),
              "readout": torch.tensor([[[0.9, 0.1]]])}
    out = _marginal_loss(computer, inputs, ANSWER)
    outputs = computer(inputs)
    assert outputs["decided"]["chains"] == 16 and computer.drawn == 4
    assert not outputs["weight"].requires_grad  # the soft runs train the parse, not the choice
    grad = torch.autograd.grad(out.loss, logits)[0]
    index = {n: k for k, n in enumerate(computer.programs)}
    # the right chains (sort then reverse) gain; a chain that never answers 9 7 3 (max at any step) loses
    assert grad[0, 0, index["insertion_sort"]] < 0 and grad[0, 1, index["reverse"]] < 0
    assert grad[0, 0, index["max"]] > 0 and grad[0, 1, index["max"]] > 0


def test_decided_runs_share_each_chains_first_step_and_agree_with_the_whole_library():
    """The decided runs (training, no gradient) run each distinct (question, chain prefix) once, each program on a
    machine of its own, and leave exactly what the whole library's machine leaves for every chain."""
    computer = _computer("marginal", samples=4).train()
    enc = computer.encoding
    strings = [[9, 3, 7, 0, 0], [4, 8, 2, 6, 0], [5, 0, 0, 0, 0]]
    inputs = {"memory": enc.encode(strings), "registers": enc.encode([[2], [1], [0]]),
              "readout": torch.tensor([[[0.9, 0.1]]] * 3)}
    chains = torch.cartesian_prod(*[torch.arange(len(PROGRAMS))] * 2).expand(3, -1, -1)  # every chain, (3, 16, 2)
    runs, single = [], computer._run_chosen_ints

    def counted(registers, memory, chosen):
        runs.append(len(chosen))
        return single(registers, memory, chosen)

    computer._run_chosen_ints = counted
    with torch.no_grad():
        fast = computer._run_decided(inputs, chains)
        whole = computer._run_chains(inputs, chains)
    assert runs == [3 * len(PROGRAMS), 3 * len(PROGRAMS) ** 2]  # first steps shared by a question's chains
    for key in ("memory", "registers", "readout"):
        torch.testing.assert_close(fast[key], whole[key], rtol=0, atol=0)
    sort_then_reverse = 4 * PROGRAMS.index("insertion_sort") + PROGRAMS.index("reverse")
    assert enc.decode(fast["memory"].view(3, 16, CELLS, -1)[:, sort_then_reverse]).tolist() == \
        [[9, 7, 3, 0, 0], [8, 6, 4, 2, 0], [5, 0, 0, 0, 0]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decided_runs_on_integers_equal_the_soft_machines_bit_for_bit(seed, monkeypatch):
    """Random parses in doubt (decided to their most likely values), random chains, a step budget too small for
    some rows to halt: the integer runs (decode once, run, encode once) leave exactly what the per-program soft
    machines (the path without integers) and the whole library's soft machine leave; the readout passes through."""
    from diffcomp.machine import exact

    torch.manual_seed(seed)
    computer = _computer("marginal", samples=4).train()
    computer.machine.max_steps = 25  # sorting 4 letters takes longer: those rows stop mid-run
    enc, batch, count = computer.encoding, 6, 5
    memory = torch.randn(batch, CELLS, BASE).softmax(-1)  # (batch, cells, base): in doubt
    memory = memory + 3 * torch.nn.functional.one_hot(torch.randint(1, 12, (batch, CELLS)), BASE) \
        * (torch.arange(CELLS) < torch.randint(1, CELLS, (batch, 1))).unsqueeze(-1)  # a zero-terminated string
    memory = memory / memory.sum(-1, keepdim=True)
    inputs = {"memory": memory, "registers": torch.randn(batch, 1, BASE).softmax(-1),
              "readout": torch.rand(batch, 1, 2).softmax(-1)}
    chains = torch.randint(0, len(PROGRAMS), (batch, count, 2))
    with torch.no_grad():
        ints = computer._run_decided(inputs, chains)
        decided = {**inputs, **computer._decided(inputs)}
        with torch.enable_grad():  # a gradient asked for: the whole library's soft machine, not the integers
            soft = computer._run_chains({**decided, "memory": decided["memory"].requires_grad_()}, chains)
        monkeypatch.setattr(exact, "supports", lambda machine: False)
        per_program = computer._run_decided(inputs, chains)
    for key in ("memory", "registers", "readout"):
        assert torch.equal(ints[key], per_program[key]), key
        assert torch.equal(enc.decode(ints[key]) if key != "readout" else ints[key],
                           enc.decode(soft[key].detach()) if key != "readout" else soft[key]), key
    torch.testing.assert_close(ints["readout"], inputs["readout"][:, 0].repeat_interleave(count, 0), rtol=0, atol=0)
    # some rows did not halt within the budget (the sort of a long string), and the states still agree
    sort = PROGRAMS.index("insertion_sort")
    with torch.no_grad():
        halted = computer._single("insertion_sort").run(computer._registers(decided, decided["memory"]),
                                                        decided["memory"]).halted
    assert (halted < 1).any() and (chains[..., 0] == sort).any()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("soft", [2, 1])
def test_marginal_choices_learn_each_kind_of_question_from_answers_alone(seed, soft):
    """As the drawn choices' learning test, with selection = 'marginal' (two chains per question, ``soft`` of them
    run soft, the model telling the computer which decided runs answer right) on a parse in doubt."""
    from diffcomp.model.heads import marginal_output

    torch.manual_seed(seed)
    _assert_learned(*_learn_two_kinds("marginal", lambda head, computer, outputs, answers: marginal_output(
        head, outputs, answers, computer.encoding, chains=computer.drawn), steps=40, doubt=0.1, judge=True,
        soft_samples=soft))


def test_marginal_reruns_a_question_whose_soft_run_is_not_a_distribution_on_its_decided_parse():
    """A soft run on an almost one-hot parse can blow up in the machine (rounding residue divided by the tiny mass
    still running); that question runs again, alone, on its decided parse, the others keep their first run."""
    computer = _computer("marginal", samples=2).eval()
    enc = computer.encoding
    soft = enc.encode([[9, 3, 7, 0, 0], [4, 8, 2, 0, 0]]) * 0.9 + 0.1 / BASE
    inputs = {"memory": soft, "registers": enc.encode([[0], [0]]), "program": torch.full((2, 2, 4), 0.25),
              "readout": torch.full((2, 1, 2), 0.5)}
    seen, first, run = [], [], computer._run_chains

    def spoiled(rows, chains):
        seen.append(rows["memory"].clone())
        out = run(rows, chains)
        first.append(out["memory"].clone())
        if len(seen) == 1:  # the first run: question 1's first chain overflows
            out["memory"] = out["memory"].clone()
            out["memory"][2, 0, 0] = float("nan")
        return out

    computer._run_chains = spoiled
    out = computer(inputs)
    assert len(seen) == 2 and torch.isfinite(out["memory"]).all()
    # the rerun runs question 1 alone, on its decided parse; question 0 keeps its first run
    assert seen[1].shape[0] == 1  # question 1 alone
    torch.testing.assert_close(seen[1][0], enc.encode([[4, 8, 2, 0, 0]])[0])  # on its decided parse
    chains = computer.ran  # (2, 2, steps): the chains each question ran
    decided = {"memory": enc.encode([[4, 8, 2, 0, 0]]), "registers": enc.encode([[0]]),
               "program": inputs["program"][1:], "readout": inputs["readout"][1:]}
    torch.testing.assert_close(out["memory"][2:], run(decided, chains[1:])["memory"])
    assert torch.equal(out["memory"][:2], first[0][:2])  # question 0's rows: its first run, as they were
    from diffcomp.model.computer import _unsound

    assert _unsound({"memory": torch.tensor([[[0.5, 0.5]], [[1.5, -0.5]]]), "registers": torch.zeros(2, 1, 2)}
                    ).tolist() == [False, True]


def test_a_rerun_question_gets_no_gradient_from_its_first_run_and_the_others_keep_theirs():
    """The first run's rows of a question run again stay in the graph; their backward meets the infinities of their
    forward (0 * inf = NaN). That gradient is cut at the parse: the gradient stays finite, the rerun question's
    parse gets none from the soft run, and the others get what their first run gives them."""
    computer = _computer("marginal", samples=2).eval()
    enc = computer.encoding
    soft = (enc.encode([[9, 3, 7, 0, 0], [4, 8, 2, 0, 0]]) * 0.9 + 0.1 / BASE).double()
    program = torch.full((2, 2, 4), 0.25, dtype=torch.float64)
    readout = torch.full((2, 1, 2), 0.5, dtype=torch.float64)
    run = computer._run_chains

    def spoiled(rows, chains):
        out = run(rows, chains)
        if rows["memory"].requires_grad and len(rows["memory"]) == 2:  # the first run: question 1 overflows,
            blow = torch.ones_like(out["memory"])  # by an operation whose backward multiplies by infinity
            blow[2, 0, 0] = float("inf")
            out["memory"] = out["memory"] * blow
        return out

    def gradient(spoil: bool) -> torch.Tensor:
        memory = soft.clone().requires_grad_()
        computer._run_chains = spoiled if spoil else run
        out = computer({"memory": memory, "registers": enc.encode([[0], [0]]).double(), "program": program,
                        "readout": readout})
        weights = torch.linspace(0.5, 1.5, out["memory"].numel(), dtype=torch.float64).view_as(out["memory"])
        (out["memory"] * weights).sum().backward()
        return memory.grad

    clean, cut = gradient(False), gradient(True)
    assert torch.isfinite(cut).all()
    assert (cut[1] == 0).all()  # question 1 ran again on its decided parse: no gradient to its parse
    assert cut[0].abs().sum() > 0
    torch.testing.assert_close(cut[0], clean[0])  # question 0's gradient is its first run's, as without the rerun


# -- soft_samples: of a question's chains, those that run soft in training ---------------------------------------

def _judged(computer: MachineComputer, inputs: dict[str, torch.Tensor], answer: torch.Tensor, *, judge: bool = True):
    """The marginal loss as a model computes it in training: the computer may ask which decided runs answer right."""
    import functools

    from diffcomp.model.heads import marginal_output, right_chains

    head = ChosenReadout(computer.readouts, computer.encoding, answer.shape[1])
    answers = answer.expand(len(inputs["memory"]), -1)
    right = functools.partial(right_chains, head, answer=answers, encoding=computer.encoding) if judge else None
    outputs = computer(inputs, right=right)
    return marginal_output(head, outputs, answers, computer.encoding, chains=computer.drawn), outputs, head


def _doubtful(computer: MachineComputer, rows: int = 1, dtype=torch.float32):
    enc = computer.encoding
    memory = (enc.encode([[9, 3, 7, 0, 0]] * rows, dtype=dtype) * 0.9 + 0.1 / BASE).requires_grad_()
    logits = torch.tensor([[[0.2, 0.1, 0.9, 0.0], [0.3, 0.4, 0.8, -0.3]]], dtype=dtype).expand(rows, -1, -1)
    logits = logits.clone().requires_grad_()
    readout = torch.tensor([[[0.4, 0.1]]], dtype=dtype).expand(rows, -1, -1).clone().requires_grad_()
    return memory, logits, readout, lambda m, lg, r: {"memory": m, "registers": enc.encode([[0]] * rows, dtype=dtype),
                                                      "program": lg.softmax(-1), "readout": r.softmax(-1)}


def test_soft_samples_equal_to_samples_is_todays_loss_and_gradient():
    """soft_samples = samples (the default) runs every chain soft: with the answers asked for or not, the loss and
    its gradients in the parse, the choice and the readout are what they were without the option."""
    results = []
    for soft_samples, judge in ((None, False), (4, True), (None, True)):
        computer = _computer("marginal", samples=4, **({} if soft_samples is None else
                                                       {"soft_samples": soft_samples})).train()
        memory, logits, readout, inputs = _doubtful(computer, rows=2)
        torch.manual_seed(0)
        out, outputs, _ = _judged(computer, inputs(memory, logits, readout), ANSWER, judge=judge)
        results.append((out.loss.detach(), *torch.autograd.grad(out.loss, (memory, logits, readout)),
                        computer.ran.clone()))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_fewer_soft_samples_run_the_chains_that_answer_right_the_most_likely_first():
    """The answer 9 in r0 (the string 9 3 7): every chain ending in max answers it, as does max then identity.
    With two soft chains of the sixteen, the two most likely of those run soft, in the chains' order."""
    computer = _computer("marginal", samples=16, soft_samples=2).train()
    memory, logits, readout, inputs = _doubtful(computer)
    torch.manual_seed(0)
    answer = torch.tensor([[9, 0, 0, 0]])
    _judged(computer, inputs(memory, logits, readout), answer)
    index = {n: k for k, n in enumerate(computer.programs)}
    q = logits.detach().softmax(-1)[0]
    right = [(a, index["max"]) for a in range(4)] + [(index["max"], index["identity"])]
    best = sorted(right, key=lambda c: -float(q[0, c[0]] * q[1, c[1]]))[:2]
    assert computer.drawn == 2 and sorted(map(tuple, computer.ran[0].tolist())) == sorted(best)
    assert computer.chosen[0].tolist() == [index["max"], index["max"]]  # still reported: the most likely chain
    # without the answers (a computer called alone), the first two in today's order: the two most likely
    computer(inputs(memory, logits, readout))
    assert computer.ran[0].tolist() == computer.chains(logits.detach().softmax(-1), 2, explore=False)[0][0].tolist()
    # a question with no right chain: today's order too
    _judged(computer, inputs(memory, logits, readout), torch.tensor([[1, 2, 3, 4]]))
    assert computer.ran[0].tolist() == computer.chains(logits.detach().softmax(-1), 2, explore=False)[0][0].tolist()


def test_fewer_soft_samples_train_the_parse_of_the_chains_that_ran_only():
    """The soft loss is the marginal over the chains that ran soft, weighed alike: -log (1/s') sum_c sum_place
    w(place) P_{c, place}(answer); against each of those chains run alone, value and gradient in the memory and
    the readout. The choice's gradient comes from the decided runs alone (right_choice_loss)."""
    from diffcomp.model.heads import chain_candidates, right_choice_loss

    computer = _computer("marginal", samples=16, soft_samples=3).train()
    memory, logits, readout, inputs = _doubtful(computer)
    enc = computer.encoding
    torch.manual_seed(1)
    out, outputs, head = _judged(computer, inputs(memory, logits, readout), ANSWER)
    ran = computer.ran[0]  # (3, steps)
    assert computer.drawn == 3 and (ran == torch.tensor([PROGRAMS.index("insertion_sort"),
                                                         PROGRAMS.index("reverse")])).all(1).any()
    choice = right_choice_loss(*chain_candidates(head, outputs["decided"], outputs["decided"]["chains"]),
                               ANSWER, enc)
    computer.selection = "mix"  # each chain alone: one-hot choices
    one = torch.nn.functional.one_hot(ran, len(PROGRAMS)).float()
    alone = computer({"memory": memory.expand(3, -1, -1), "registers": enc.encode([[0]] * 3), "program": one,
                      "readout": readout.softmax(-1).expand(3, -1, -1)})
    candidates, _ = head.candidates(alone)
    nll = torch.stack([answer_nll(candidates[:, c], ANSWER.expand(3, -1), enc)[0] for c in range(2)], 1)
    exact = -torch.log((readout.softmax(-1)[0, 0] * torch.exp(-nll)).sum(1).mean())
    assert torch.isclose(out.loss, exact + choice, rtol=1e-5)
    got = torch.autograd.grad(out.loss, (memory, readout, logits), retain_graph=True)
    want = torch.autograd.grad(exact + choice, (memory, readout, logits), retain_graph=True)
    torch.testing.assert_close(got[0], want[0], rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(got[2], torch.autograd.grad(choice, logits)[0])  # only the decided runs train it


@pytest.mark.slow
def test_fewer_soft_samples_loss_gradcheck_in_float64():
    computer = _computer("marginal", samples=16, soft_samples=2).train()
    computer.machine.max_steps = 40
    memory, logits, readout, inputs = _doubtful(computer, dtype=torch.float64)
    direction = torch.randn(3, *memory.shape[1:], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    base = memory.detach()

    def loss(t, lg):  # the memory moved along three directions, and the choice
        torch.manual_seed(0)  # the same chains drawn each time
        m = (base + 1e-2 * torch.einsum("d,d...->...", t, direction)).clamp_min(0)
        return _judged(computer, inputs(m, lg, readout), ANSWER)[0].loss

    t = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(loss, (t, logits), eps=1e-6, atol=1e-5)
    # the readout: the soft runs' marginal (the decided runs' readout carries no gradient, so it is taken out)
    from diffcomp.model.heads import chain_candidates, right_choice_loss

    def soft(r):
        torch.manual_seed(0)
        out, outputs, head = _judged(computer, inputs(base, logits.detach(), r), ANSWER)
        decided = outputs["decided"]
        return out.loss - right_choice_loss(*chain_candidates(head, decided, decided["chains"]), ANSWER,
                                            computer.encoding)

    assert torch.autograd.gradcheck(soft, (readout,), eps=1e-6, atol=1e-5)


def test_soft_samples_is_checked():
    machine = _computer("marginal").machine

    def build(**options):
        return MachineComputer(machine, programs=machine.entry_points, registers=7, cells=CELLS, steps=2,
                               arguments=(ARG,), readouts=("memory", "r0"), **options)

    for bad, message in ((0, "positive integer"), (-1, "positive integer"), (True, "positive integer"),
                         (1.5, "positive integer"), (5, "more than samples = 4")):
        with pytest.raises(ValueError, match=message):
            build(selection="marginal", samples=4, soft_samples=bad)
    for selection in ("mix", "sample"):
        with pytest.raises(ValueError, match="applies to selection = 'marginal'"):
            build(selection=selection, soft_samples=1)
    assert build(selection="marginal", samples=4).soft_samples == 4
    assert build(selection="marginal", samples=4, soft_samples=2).soft_samples == 2


# -- questions of their own, for the options below -----------------------------------

def _varied(computer: MachineComputer, rows: int):
    """``rows`` questions with strings and choices of their own (a parse in doubt), and the answers: each string's
    largest number, in r0 (several chains answer it: max then anything that keeps r0, or max after a program that
    keeps the string's letters)."""
    enc = computer.encoding
    g = torch.Generator().manual_seed(3)
    strings = torch.randint(1, BASE, (rows, 3), generator=g)
    ints = torch.cat([strings, torch.zeros(rows, CELLS - 3, dtype=torch.long)], 1)
    memory = (enc.encode(ints) * 0.9 + 0.1 / BASE).requires_grad_()
    logits = torch.randn(rows, 2, len(PROGRAMS), generator=g).requires_grad_()
    readout = torch.randn(rows, 1, 2, generator=g).requires_grad_()
    answer = torch.cat([strings.max(1, keepdim=True).values, torch.zeros(rows, 3, dtype=torch.long)], 1)

    def inputs(m, lg, r):
        return {"memory": m, "registers": enc.encode(torch.zeros(rows, 1, dtype=torch.long)),
                "program": lg.softmax(-1), "readout": r.softmax(-1)}
    return memory, logits, readout, inputs, answer


# -- credit_power: each right chain's share of the choice's gradient ---------------------------------------------

@pytest.mark.parametrize("power", [0.5, 0.2])
def test_credit_power_gradient_is_the_powered_marginal_over_right_chains_and_places(power):
    """Without argument_search every chain runs once on the decided parse: the choice's gradient is that of
    -(1/b) log sum_{(c, place) right} (pi(c) w(place))^b, written out over every chain run alone; the loss's
    value, and the gradients in the memory, are those of credit_power = 1 (questions of :func:`_varied`)."""
    results = {}
    for b in (1.0, power):
        computer = _computer("marginal", samples=16, soft_samples=2, credit_power=b).train()
        memory, logits, readout, inputs, answer = _varied(computer, 3)
        torch.manual_seed(0)
        out, outputs, head = _judged(computer, inputs(memory, logits, readout), answer)
        results[b] = (out.loss.detach(), *torch.autograd.grad(out.loss, (memory, logits)))
    # the written-out loss: every chain alone on the decided string (one-hot choices), its answer at each place
    computer = _computer("marginal", samples=16, credit_power=power).eval()
    memory, logits, readout, inputs, answer = _varied(computer, 3)
    enc = computer.encoding
    q, w = logits.softmax(-1), readout.softmax(-1)[:, 0]
    decided = enc.encode(enc.decode(memory.detach()))
    total = []
    for i in range(3):
        terms = []
        for a, b2 in itertools.product(range(len(PROGRAMS)), repeat=2):
            one = torch.nn.functional.one_hot(torch.tensor([[a, b2]]), len(PROGRAMS)).float()
            with torch.no_grad():
                ran = computer({"memory": decided[i:i + 1], "registers": enc.encode([[0]]), "program": one,
                                "readout": torch.ones(1, 1, 2) / 2})
            got = enc.decode(ChosenReadout(computer.readouts, enc, 4).candidates(ran)[0])[0]  # (places, 4)
            for place in range(2):
                if torch.equal(got[place], answer[i]):
                    terms.append((q[i, 0, a] * q[i, 1, b2] * w[i, place]) ** power)
        assert len(terms) > 2
        total.append(-torch.log(torch.stack(terms).sum()) / power)
    written = torch.stack(total).sum() / 3
    assert torch.equal(results[power][0], results[1.0][0])  # the value: -log P(right), whatever the power
    torch.testing.assert_close(results[power][1], results[1.0][1])  # the memory learns from the soft runs alone
    torch.testing.assert_close(results[power][2], torch.autograd.grad(written, logits)[0], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(results[power][2], results[1.0][2], rtol=1e-2, atol=1e-4)


def test_credit_power_is_checked_and_a_stage_may_change_it():
    machine = _computer("marginal").machine

    def build(**options):
        return MachineComputer(machine, programs=machine.entry_points, registers=7, cells=CELLS, steps=2,
                               arguments=(ARG,), readouts=("memory", "r0"), **options)

    for bad in (0, -1, 1.5, False, "half"):
        with pytest.raises(ValueError, match=r"credit_power must be a number in \(0, 1\]"):
            build(selection="marginal", samples=4, credit_power=bad)
    for selection in ("mix", "sample"):
        with pytest.raises(ValueError, match="credit_power shares the credit .* needs selection = 'marginal'"):
            build(selection=selection, credit_power=0.5)
    computer = build(selection="marginal", samples=4)
    assert computer.credit_power == 1.0
    assert computer.set_stage_options(credit_power=0.25) == {"credit_power": 1.0} and computer.credit_power == 0.25
