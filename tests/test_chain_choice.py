"""``choice = "chains"``: one classifier over whole chains instead of one per chain step; ``decision =
"function"``: the chains that answer alike pool their probability in evaluation.

The choice over chains is checked against the per-step choices it
generalises (a distribution over chains that is the product of per-step
ones trains exactly as they do), in float64 by ``gradcheck``, exactly on
one-hot choices, and on its errors; the pooled decision against pools made
by comparing every two chains with ``answers_alike``.
"""

from __future__ import annotations

import itertools

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


# -- decision = "function": chains that answer alike pool their probability ----------------------------------------

def _chain_number(*names: str) -> int:
    return sum(PROGRAMS.index(p) * N ** (len(names) - 1 - k) for k, p in enumerate(names))


def test_chains_that_sort_pool_against_one_chain_that_sorts_descending():
    """``insertion_sort`` then ``reverse`` is the most likely chain (0.3). Read from memory, the chains that
    leave the string sorted hold 0.55 together; read from r0, ``insertion_sort`` then ``max`` leaves the largest
    letter there and is not among them, but the others still hold 0.37: ``insertion_sort`` then ``identity``,
    their most likely, runs both times."""
    computer = _computer("marginal", samples=4, choice="chains", decision="function").eval()
    joint = torch.full((2, N ** 2), 0.15 / (N ** 2 - 4))
    for chain, p in ((("insertion_sort", "reverse"), 0.3), (("insertion_sort", "identity"), 0.22),
                     (("insertion_sort", "max"), 0.18), (("identity", "insertion_sort"), 0.15)):
        joint[:, _chain_number(*chain)] = p
    assert computer.answers_alike(("insertion_sort", "max"), ("insertion_sort",), "memory")
    assert not computer.answers_alike(("insertion_sort", "max"), ("insertion_sort",), "r0")
    parsed = {"chain": joint.unsqueeze(1)}
    readout = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # memory, then r0
    decided = computer.decide_chain(parsed, {"readout": readout})["chain"][:, 0]
    assert decided.argmax(-1).tolist() == [_chain_number("insertion_sort", "identity")] * 2
    assert decided.sum(-1).tolist() == [1.0, 1.0]
    computer.decision = "chain"
    assert computer.decide_chain(parsed, {"readout": readout}) == {}


@pytest.mark.parametrize("choice", ["steps", "chains"])
def test_the_pooled_decision_against_pools_made_pair_by_pair(choice):
    """Random choices and readouts: the decided chain is the most likely chain of the group of chains that
    answers_alike finds alike with it, and no other group is more likely."""
    computer = _computer("marginal", samples=4, choice=choice, decision="function").eval()
    g = torch.Generator().manual_seed(5)
    rows = 24
    names = list(itertools.product(PROGRAMS, repeat=2))
    if choice == "chains":
        joint = torch.randn(rows, N ** 2, generator=g).softmax(-1)
        parsed = {"chain": joint.unsqueeze(1)}
    else:
        parsed = {"program": torch.randn(rows, 2, N, generator=g).softmax(-1)}
        joint = _joint(torch.log(parsed["program"]))
    readout = torch.nn.functional.one_hot(torch.randint(0, 2, (rows, 1), generator=g), 2).float()
    out = computer.decide_chain(parsed, {"readout": readout})
    if choice == "chains":
        decided = out["chain"][:, 0].argmax(-1).tolist()
    else:
        assert out["program"].shape == (rows, 2, N) and bool((out["program"].sum(-1) == 1).all())
        decided = [a * N + b for a, b in out["program"].argmax(-1).tolist()]
    pooled_rows = 0
    for i in range(rows):
        place = computer.readouts[int(readout[i, 0].argmax())]
        groups = []  # the chains, grouped pair by pair
        for c in range(N ** 2):
            for group in groups:
                if computer.answers_alike(names[group[0]], names[c], place):
                    group.append(c)
                    break
            else:
                groups.append([c])
        mass = [float(joint[i, group].sum()) for group in groups]
        best = groups[max(range(len(groups)), key=mass.__getitem__)]
        assert decided[i] == max(best, key=lambda c: float(joint[i, c])), i
        pooled_rows += decided[i] != int(joint[i].argmax())
    assert pooled_rows >= 2  # questions where pooling decides otherwise than the most likely chain


def test_a_pooled_decision_is_what_the_model_runs_and_numpy_leaves_it_to_torch(tmp_path):
    from diffcomp.inference import load
    from diffcomp.inference.model import NumpyModel, Unsupported
    from diffcomp.model import build_model, build_task

    task = build_task("composed", {"lengths": [1, 2, 3], "width": 6, "examples": 100}, seed=0)
    computer = {"alu": "lookup", "base": 128, "library": ["insertion_sort", "reverse", "count", "count_distinct",
                                                          "max", "min", "length", "sum", "nth", "identity"],
                "steps": 2, "selection": "marginal", "samples": 4, "readout": "learned", "max_steps": 70,
                "choice": "chains", "decision": "function"}
    options = {"spans": ["memory"], "values": "embeddings", "start": "before", "end_keys": "embeddings",
               "choices": "states", "shared_values": True, "outside_spans": True}
    model = build_model({"backbone": "llama", "hidden_size": 32, "layers": 1, "heads": 2, "kv_heads": 1,
                         "tokenizer": "byte", "parser": "span", "parser_options": options}, computer, task).eval()
    assert model.computer.decision == "function"
    batch = {k: v[:16] for k, v in task.dataset("validation").tensors.items()}
    with torch.no_grad():
        parsed = model.parse(model.read(batch), decide=True)
        decided = model.decide(parsed)
        model(batch)
    expected = model.computer.decide_chain(parsed, decided)["chain"]
    assert torch.equal(decided["chain"], expected)
    assert model.computer.chosen.tolist() == [[int(c) // 10, int(c) % 10] for c in expected[:, 0].argmax(-1)]
    model.save_pretrained(tmp_path / "model")
    with pytest.raises(Unsupported, match="decision = 'function'"):
        NumpyModel(tmp_path / "model")
    loaded, engine, why = load(tmp_path / "model")
    assert engine == "torch" and "decision = 'function'" in why
    assert loaded.computer.decision == "function"


def test_a_pooled_decision_is_checked():
    machine = _computer("marginal").machine

    def build(machine=machine, **options):
        return MachineComputer(machine, programs=machine.entry_points, registers=ARG + 1, cells=CELLS, steps=2,
                               arguments=(ARG,), readouts=("memory", "r0"), selection="marginal", samples=4,
                               **options)

    with pytest.raises(ValueError, match=r"decision must be one of \('chain', 'function'\).*got 'functions'"):
        build(decision="functions")
    import diffcomp
    from diffcomp.machine import Machine
    from diffcomp.machine.chain import library

    trainable = Machine(library(*PROGRAMS), diffcomp.alu("lookup", base=64), cells=CELLS, max_steps=20,
                        registers=ARG + 1, trainable=True)
    with pytest.raises(ValueError, match="decision = 'function' .* on integers"):
        build(trainable, decision="function")
    assert build().decision == "chain"
