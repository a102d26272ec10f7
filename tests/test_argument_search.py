"""``argument_search``: the choice's exact runs try every value of the argument register.

The searched rows are checked against brute force: every chain run on the decided parse once per argument value
by the reference path (the soft machine on one-hot inputs, one program's machine at a time), weighed
``pi(c) P(arg = v)``; the loss and its gradients must agree, in float64.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from diffcomp.model import build_model, build_task
from diffcomp.model.computer import DECIDED_CHAINS, _distinct
from diffcomp.model.heads import chain_candidates, right_choice_loss
from reference_machine import one_thread  # noqa: F401 (an autouse fixture)

RECIPE = """\
[model]
backbone = "llama"
hidden_size = 32
layers = 1
heads = 2
kv_heads = 1
parser = "span"
parser_options = {{ values = "embeddings", start = "before", choices = "states", shared_values = true }}

[computer]
alu = "lookup"
base = {base}
library = {library}
steps = {steps}
selection = "marginal"
samples = 2
readout = "learned"
argument_search = true
"""


def _recipe(task: str, types: list[str], library: list[str], steps: int, **computer) -> dict:
    from diffcomp.recipe import parse_recipe

    text = textwrap.dedent(RECIPE.format(base=128, library=_toml(library), steps=steps))
    for key, value in computer.items():  # a key of the recipe's changed, or added
        lines = [line for line in text.splitlines() if not line.startswith(f"{key} = ")]
        text = "\n".join(lines).replace("[computer]", f"[computer]\n{key} = {_toml(value)}") + "\n"
    head = f"name = 't'\n[task]\nname = '{task}'\ntypes = {_toml(types)}\nlengths = [1, 2, 3]\nwidth = 4\n"
    return parse_recipe(head + text + "[[stages]]\nkind = 'train'\n").data


def _toml(value) -> str:
    return str(value).replace("'", '"').replace("True", "true").replace("False", "false")


def _model(task: str, types: list[str], library: list[str], steps: int):
    data = _recipe(task, types, library, steps)
    t = build_task(task, {"types": types, "lengths": [1, 2, 3], "width": 4, "examples": 80}, seed=0)
    return build_model(data["model"], data["computer"], t).double(), t


def _inputs(model, batch: int, seed: int, answers: torch.Tensor | None):
    """Random parser outputs: a soft argument, memory holding strings of letters, soft choices and readouts."""
    g = torch.Generator().manual_seed(seed)
    c, enc = model.computer, model.computer.encoding
    n = enc.modulus
    letters = torch.randint(97, 101, (batch, c.cells), generator=g)
    letters[:, 3:] = 0
    memory = enc.encode(letters, dtype=torch.float64)
    # the argument: mostly on a few values (letters and small numbers), a little everywhere
    logits = torch.randn(batch, 1, n, generator=g, dtype=torch.float64)
    logits[..., :4] += 3
    logits[..., 97:101] += 3
    program = torch.randn(batch, c.steps, len(c.programs), generator=g, dtype=torch.float64)
    readout = torch.randn(batch, 1, len(c.readouts), generator=g, dtype=torch.float64).softmax(-1)
    leaves = {"registers": logits.requires_grad_(), "program": program.requires_grad_()}  # the parser's scores
    return {"registers": logits.softmax(-1), "memory": memory, "program": program.softmax(-1),
            "readout": readout}, leaves


def _brute_force(model, inputs, chains, weight):
    """Every chain once per argument value by the reference path, rows weighed ``pi(c) P(v)``; a chain with
    ``nth`` at a value beyond the memory's cells (an address the machine wraps around) weighs 0 (the memory
    holds a terminated string, so no other program here addresses beyond it)."""
    c, enc = model.computer, model.computer.encoding
    batch, count, _ = chains.shape
    decided = c._decided(inputs)
    has_nth = (chains == c.programs.index("nth")).any(-1) if "nth" in c.programs else torch.zeros_like(weight, dtype=bool)
    rows, weights = [], []
    for v in range(enc.modulus):
        at_v = {**inputs, **decided, "registers": enc.encode(torch.full((batch, 1), v), dtype=torch.float64)}
        with torch.no_grad():
            rows.append(c._run_decided(at_v, chains))
        wraps = has_nth & (v >= c.cells)
        weights.append(weight * inputs["registers"][:, 0, v].unsqueeze(1) * ~wraps)  # (batch, count)
    out = {k: torch.stack([r[k].view(batch, count, *r[k].shape[1:]) for r in rows], 2).flatten(0, 2)
           for k in ("registers", "memory", "readout")}
    out["weight"] = torch.stack(weights, 2).flatten()
    return out, count * enc.modulus


def _both_ways(model, batch: int):
    """The searched rows' side and brute force's, on the same parser outputs: ``(side, inputs, their leaves, every
    chain, its probability)`` for each."""
    for side in ("searched", "brute"):
        inputs, leaves = _inputs(model, batch, 0, None)
        chains, weight = model.computer.chains(inputs["program"], DECIDED_CHAINS, explore=False)
        yield side, inputs, leaves, chains, weight


def _answers(model, batch: int, seed: int) -> torch.Tensor:
    """Answers that some (chain, value) gives: the outcome of a random chain at a random value, read by a place."""
    probe, _ = _inputs(model, batch, 0, None)
    chains, weight = model.computer.chains(probe["program"], DECIDED_CHAINS, explore=False)
    brute, per = _brute_force(model, probe, chains, weight)
    candidates, _ = chain_candidates(model.head, brute, per)
    pick = torch.randint(0, candidates.shape[1], (batch,), generator=torch.Generator().manual_seed(seed))
    return model.computer.encoding.decode(candidates[torch.arange(batch), pick])


def _written_out_loss(model, out, width: int, answer: torch.Tensor, batch: int) -> torch.Tensor:
    """``-log sum_right w`` over brute force's rows ``out`` (``width`` per question), written out (without the
    loss's floor under each weight); a question no row answers adds nothing."""
    candidates, w = chain_candidates(model.head, out, width)
    right = (model.computer.encoding.decode(candidates.detach()) == answer.unsqueeze(1)).all(-1) & (w.detach() > 0)
    found = right.any(1)
    return -torch.log((w * right)[found].sum(1)).sum() / batch


def _agree(losses: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    """The searched side's loss and gradient are brute force's (which are not trivial)."""
    assert losses[0] > 0
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-9, atol=1e-12)
    assert grads[1].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("task, types, library, steps", [
    ("mixed", ["sort", "count", "nth", "max"], ["insertion_sort", "count", "nth", "max"], 1),
    ("composed", ["sort", "count", "distinct", "kth_smallest", "sort_descending"],
     ["insertion_sort", "count", "count_distinct", "nth", "reverse", "identity"], 2),
])
def test_searched_rows_give_the_brute_force_loss_and_gradients(task, types, library, steps):
    model, _ = _model(task, types, library, steps)
    c = model.computer
    batch = 5
    answer = _answers(model, batch, 1)
    answer[0] = 77  # a question no chain answers: it adds nothing to either loss
    losses, grads = [], []
    for rows in ("searched", "brute"):
        inputs, leaves = _inputs(model, batch, 0, None)
        chains, weight = c.chains(inputs["program"], DECIDED_CHAINS, explore=False)
        out, width = ((c._search_arguments(inputs, chains, weight), None) if rows == "searched"
                      else _brute_force(model, inputs, chains, weight))
        width = out["chains"] if rows == "searched" else width
        if rows == "searched":  # the training loss
            loss = right_choice_loss(*chain_candidates(model.head, out, width), answer, c.encoding)
        else:
            loss = _written_out_loss(model, out, width, answer, batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append((leaves["registers"].grad, leaves["program"].grad))  # through the softmax: sums to 1
    assert losses[0] > 0
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-9, atol=1e-12)
    for got, expected in zip(grads[0], grads[1]):
        assert expected.abs().sum() > 0
        torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("task, types, library, steps", [
    ("mixed", ["sort", "count", "nth", "max"], ["insertion_sort", "count", "nth", "max"], 1),
    ("composed", ["sort", "count", "distinct", "kth_smallest", "sort_descending"],
     ["insertion_sort", "count", "count_distinct", "nth", "reverse", "identity"], 2),
])
def test_the_arguments_own_loss_is_the_brute_force_over_the_chains_that_read_it(task, types, library, steps):
    """argument_loss: -log sum_{c reads} pi'(c) sum_v P(v) [right], pi' the reading chains' probabilities
    renormalised among them (no gradient), against brute force; its gradient reaches the argument only."""
    model, _ = _model(task, types, library, steps)
    c = model.computer
    c.argument_loss = 1.0
    batch = 5
    answer = _answers(model, batch, 2)
    reads = torch.tensor([p in ("count", "nth") for p in c.programs])
    losses, grads = [], []
    for rows, inputs, leaves, chains, weight in _both_ways(model, batch):
        if rows == "searched":
            out = c._search_arguments(inputs, chains, weight)
            own = {**out, "weight": out["argument_weight"]}
            loss = right_choice_loss(*chain_candidates(model.head, own, out["chains"]), answer, c.encoding)
        else:
            reading = reads[chains].any(-1)  # (batch, count): chains with a program that reads the argument
            share = (weight.detach() * reading) / (weight.detach() * reading).sum(1, keepdim=True)
            loss = _written_out_loss(model, *_brute_force(model, inputs, chains, share), answer, batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append(leaves["registers"].grad)
        assert leaves["program"].grad is None or not leaves["program"].grad.any()  # no gradient to the choice
    _agree(losses, grads)


@pytest.mark.parametrize("task, types, library, steps", [
    ("mixed", ["sort", "count", "nth", "max"], ["insertion_sort", "count", "nth", "max"], 1),
    ("composed", ["sort", "count", "distinct", "kth_smallest", "sort_descending"],
     ["insertion_sort", "count", "count_distinct", "nth", "reverse", "identity"], 2),
])
def test_the_choices_loss_at_the_decided_argument_is_the_brute_force_over_decided_runs(task, types, library, steps):
    """decided_argument_loss: -log sum_c pi(c) [c answers right with the argument at its decided value], against
    every chain run on the decided parse by the reference path; its gradient reaches the choice only."""
    model, _ = _model(task, types, library, steps)
    c, enc = model.computer, model.computer.encoding
    c.decided_argument_loss = 1.0
    batch = 6
    answer = _answers(model, batch, 3)
    # half the questions answered by a chain at the decided argument (so the loss has right chains to weigh)
    probe, _ = _inputs(model, batch, 0, None)
    chains, _ = c.chains(probe["program"], DECIDED_CHAINS, explore=False)
    with torch.no_grad():
        decided_runs = c._run_decided({**probe, **c._decided(probe)}, chains)
    decided_runs["weight"] = torch.ones(chains.shape[:2], dtype=torch.float64).flatten()
    candidates, _ = chain_candidates(model.head, decided_runs, chains.shape[1])
    pick = torch.randint(0, candidates.shape[1], (batch,), generator=torch.Generator().manual_seed(4))
    answer[::2] = enc.decode(candidates[torch.arange(batch), pick])[::2]
    losses, grads = [], []
    for rows, inputs, leaves, chains, weight in _both_ways(model, batch):
        if rows == "searched":
            out = c._search_arguments(inputs, chains, weight)
            at = {**out, "weight": out["decided_weight"]}
            loss = right_choice_loss(*chain_candidates(model.head, at, out["chains"]), answer, enc)
        else:
            decided = c._decided(inputs)
            with torch.no_grad():
                out = c._run_decided({**inputs, **decided}, chains)
            value = enc.decode(decided["registers"])[:, 0]  # (batch,): the decided argument
            wraps = (chains == c.programs.index("nth")).any(-1) & (value >= c.cells).unsqueeze(1)
            out["weight"] = (weight * ~wraps).flatten()
            loss = _written_out_loss(model, out, chains.shape[1], answer, batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append(leaves["program"].grad)
        assert leaves["registers"].grad is None or not leaves["registers"].grad.any()  # no gradient to the argument
    _agree(losses, grads)


def test_the_choices_loss_at_the_decided_argument_passes_gradcheck():
    model, _ = _model("composed", ["distinct", "kth_smallest"], ["insertion_sort", "nth", "count_distinct",
                                                                 "identity"], 2)
    c, enc = model.computer, model.computer.encoding
    c.decided_argument_loss = 1.0
    inputs, _ = _inputs(model, 3, 5, None)
    memory = enc.decode(inputs["memory"])
    answer = torch.zeros(3, 4, dtype=torch.long)
    answer[:, 0] = memory[:, 0]  # what nth at 0 (or min, max) may give: some chain is right at the decided value
    logits = torch.randn(3, c.steps, len(c.programs), dtype=torch.float64, generator=torch.Generator().manual_seed(6))

    def loss(program_logits):
        program = program_logits.softmax(-1)
        chains, weight = c.chains(program, DECIDED_CHAINS, explore=False)
        out = c._search_arguments({**inputs, "program": program}, chains, weight)
        return right_choice_loss(*chain_candidates(model.head, {**out, "weight": out["decided_weight"]},
                                                   out["chains"]), answer, enc)

    assert loss(logits) > 0
    assert torch.autograd.gradcheck(loss, (logits.requires_grad_(),), eps=1e-6, atol=1e-6)


def test_the_decided_argument_loss_joins_the_training_loss_only_when_weighed():
    """The model's training loss with decided_argument_loss = 1 is the loss without it plus the term (the same
    draws: the term reads runs the searched loss already made)."""
    model, t = _model("composed", ["distinct", "kth_smallest", "sort"], ["insertion_sort", "nth", "count_distinct",
                                                                          "identity"], 2)
    batch = {k: v[:16] for k, v in t.dataset("train").tensors.items()}
    model.train()
    losses = []
    for weight in (0.0, 1.0, 2.0):
        model.computer.decided_argument_loss = weight
        torch.manual_seed(0)
        losses.append(model(batch).loss.detach())
    term = losses[1] - losses[0]
    assert term > 0
    torch.testing.assert_close(losses[2] - losses[0], 2 * term, rtol=1e-9, atol=1e-12)


def test_a_chain_runs_with_the_decided_argument_until_a_program_reads_it():
    """Of sort, nth and count_distinct only nth reads the argument; the outcomes are few next to one per chain
    and value, and their weights sum to the chains' probability."""
    model, _ = _model("composed", ["distinct", "kth_smallest"], ["insertion_sort", "nth", "count_distinct"], 2)
    c = model.computer
    inputs, _ = _inputs(model, 3, 2, None)
    chains, weight = c.chains(inputs["program"], DECIDED_CHAINS, explore=False)
    out = c._search_arguments(inputs, chains, weight)
    assert out["chains"] <= 2 * c.cells * 8  # outcomes are what a readout reads (r0, memory): few per question
    enc = c.encoding
    assert (enc.decode(out["registers"])[:, 1:] == 0).all()  # the registers no readout reads are left out
    # the rows' weights sum to the chains' probability, less the argument values at which nth reads beyond memory
    totals = out["weight"].view(3, -1).sum(1)
    in_memory = inputs["registers"][:, 0, : c.cells].sum(-1, keepdim=True)  # (3, 1): P(arg < cells)
    has_nth = (chains == c.programs.index("nth")).any(-1)
    expected = (weight * torch.where(has_nth, in_memory, torch.ones_like(in_memory))).sum(1)
    torch.testing.assert_close(totals, expected, rtol=1e-9, atol=1e-12)
    assert (totals < weight.sum(1) - 1e-3).all()
    reads = c._reading_programs()
    assert [c.programs[i] for i in range(len(c.programs)) if reads[i]] == ["nth"]


def test_a_value_that_answers_only_by_wrapping_around_memory_is_never_right():
    """nth on a 5-cell memory: "letter 2" is r6 = 1, and r6 = 6 reads the same cell by wrapping; only 1 counts."""
    model, _ = _model("mixed", ["nth", "max"], ["nth", "max"], 1)
    c, enc = model.computer, model.computer.encoding
    assert c.cells == 5
    inputs, _ = _inputs(model, 1, 0, None)
    inputs["memory"] = enc.encode(torch.tensor([[97, 98, 99, 0, 0]]), dtype=torch.float64)
    p = torch.zeros(1, 1, enc.modulus, dtype=torch.float64)
    p[0, 0, 1], p[0, 0, 6] = 0.25, 0.75  # most of the argument on the wrapping value
    inputs["registers"] = p
    inputs["program"] = torch.nn.functional.one_hot(torch.tensor([[c.programs.index("nth")]]), 2).double()
    # (max answers 99: never right)
    chains, weight = c.chains(inputs["program"], DECIDED_CHAINS, explore=False)
    out = c._search_arguments(inputs, chains, weight)
    loss = right_choice_loss(*chain_candidates(model.head, out, out["chains"]), torch.tensor([[98, 0, 0, 0]]), enc)
    torch.testing.assert_close(loss, -torch.log(torch.tensor(0.25, dtype=torch.float64)))


def test_integer_runs_flag_the_rows_that_address_beyond_memory():
    import numpy as np

    from diffcomp.machine import exact

    model, _ = _model("mixed", ["nth", "max"], ["nth", "max"], 1)
    single = model.computer._single("nth")
    registers = np.zeros((3, 7), dtype=np.int64)
    registers[:, 6] = [1, 6, 4]  # cells 0..4: 6 wraps; 4 is the last cell
    memory = np.tile(np.array([[97, 98, 99, 0, 0]]), (3, 1))
    beyond = np.zeros(3, dtype=bool)
    run = exact.run_ints(single._exact_program(), registers, memory,
                         np.full(3, single.image.entries["nth"]), general=7, cells=5, max_steps=10,
                         index=model.computer.encoding.categorical_index, beyond=beyond)
    assert run.registers[:, 0].tolist() == [98, 98, 0] and beyond.tolist() == [False, True, False]


def test_distinct_rows_groups_equal_rows_and_survives_a_forced_collision(monkeypatch):
    import numpy as np

    g = np.random.default_rng(0)
    rows = g.integers(0, 3, (400, 5))
    first, inverse = _distinct(rows)
    assert (rows[first[inverse]] == rows).all()
    assert len(first) == len({tuple(r) for r in rows.tolist()})
    real_unique = np.unique

    def colliding(a, *args, **kwargs):  # every hash the same: the check must catch it
        if a.ndim == 1 and a.dtype == np.uint64:
            a = np.zeros_like(a)
        return real_unique(a, *args, **kwargs)

    monkeypatch.setattr(np, "unique", colliding)
    first, inverse = _distinct(rows)
    assert (rows[first[inverse]] == rows).all() and len(first) > 1


@pytest.mark.parametrize("change, message", [
    ({"selection": "sample"}, "applies to selection = 'marginal'"),
    ({"readout": "task"}, "every register"),
    ({"argument_search": 1}, "argument_search must be"),
    ({"trainable_programs": True}, "runs the chains on integers"),
    ({"argument_search": False, "argument_loss": 1.0}, "set argument_search = true, or argument_loss = 0"),
    ({"argument_loss": -1.0}, r"argument_loss = -1.0: must be non-negative"),
    ({"argument_search": False, "decided_argument_loss": 1.0},
     "set argument_search = true, or decided_argument_loss = 0"),
    ({"decided_argument_loss": -0.5}, r"decided_argument_loss = -0.5: must be non-negative"),
])
def test_bad_argument_search_settings_are_clear_errors(change, message):
    data = _recipe("mixed", ["count"], ["count"], 1)
    t = build_task("mixed", {"types": ["count"], "lengths": [1, 2], "examples": 20}, seed=0)
    with pytest.raises(ValueError, match=message):
        build_model(data["model"], {**data["computer"], **change}, t)


def test_a_library_without_an_argument_has_nothing_to_search():
    data = _recipe("mixed", ["sort"], ["insertion_sort"], 1)
    t = build_task("mixed", {"types": ["sort"], "lengths": [1, 2], "examples": 40}, seed=0)
    model = build_model(data["model"], data["computer"], t).train()
    assert model.computer.arguments == () and model.computer.argument_search
    out = model({k: v[:4] for k, v in t.dataset("train").tensors.items() if k != "chain"})
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_a_recipe_with_a_malformed_argument_search_is_refused():
    from diffcomp.errors import RecipeError

    with pytest.raises(RecipeError, match="argument_search"):
        _recipe("mixed", ["count"], ["count"], 1, argument_search='"yes"')


def test_with_the_search_the_soft_chains_are_picked_as_without_it():
    """With the search the decided runs cover only the question's own chains (the search covers every chain): the
    chains that run soft, a right one first, are the ones every chain's decided runs pick."""
    import functools

    from diffcomp.model.heads import right_chains

    types = ["sort", "max", "distinct", "kth_smallest"]
    library = ["insertion_sort", "max", "count_distinct", "nth", "identity"]
    t = build_task("composed", {"types": types, "lengths": [1, 2, 3], "width": 4, "examples": 80}, seed=0)
    ran = []
    for search in (True, False):
        data = _recipe("composed", types, library, 2, argument_search=search, samples=8, soft_samples=2)
        model = build_model(data["model"], data["computer"], t).double().train()
        c = model.computer
        inputs, _ = _inputs(model, 6, 2, None)
        probe = c._run_decided(inputs, c.chains(inputs["program"], DECIDED_CHAINS, explore=False)[0])
        candidates, _ = chain_candidates(model.head, {**probe, "weight": torch.ones(len(probe["memory"]))},
                                         len(c.programs) ** 2)
        answer = c.encoding.decode(candidates[:, 7])  # what each question's 8th most likely chain answers
        right = functools.partial(right_chains, model.head, answer=answer, encoding=c.encoding)
        torch.manual_seed(0)
        out = c._marginal(inputs, right)
        assert ("searched" in out) == search and out["decided"]["chains"] == (8 if search else len(c.programs) ** 2)
        ran.append(c.ran.clone())
    assert torch.equal(ran[0], ran[1])


@pytest.mark.parametrize("power", [0.5, 0.1])
def test_credit_power_shares_the_credit_among_the_right_chains_against_brute_force(power):
    """credit_power b: the choice's gradient is that of -(1/b) log sum (S(c, state) w(place))^b over each
    question's right (chain, final state, place), S the summed pi(c) P(v) of the chain's runs that end in that
    state; against brute force (every chain at every value by the reference path), value and gradients in the
    argument and the choice, in float64. Its value as a loss is -log P(right), unchanged."""
    from diffcomp.model.heads import marginal_candidates, marginal_output

    model, _ = _model("composed", ["sort", "count", "distinct", "kth_smallest", "sort_descending"],
                      ["insertion_sort", "count", "count_distinct", "nth", "reverse", "identity"], 2)
    c, enc = model.computer, model.computer.encoding
    c.credit_power = power
    batch = 5
    answer = _answers(model, batch, 3)
    answer[0] = 77  # no chain answers it: it adds nothing
    read = [int(p[1:]) for p in c.readouts if p.startswith("r")]
    losses, grads = [], []
    for rows, inputs, leaves, chains, weight in _both_ways(model, batch):
        if rows == "searched":
            out = c._search_arguments(inputs, chains, weight)
            candidates, place = model.head.candidates(out)
            loss = right_choice_loss(*marginal_candidates(candidates, place ** power, out["credit"], out["chains"]),
                                     answer, enc) / power
            # inside the model's loss: the value of -log P(right), the gradient of the line above
            whole = marginal_output(model.head, {**out, "searched": out}, answer, enc, chains=out["chains"])
            plain_rows = {k: v for k, v in out.items() if k not in ("credit", "credit_power")}
            plain = marginal_output(model.head, {**plain_rows, "searched": plain_rows}, answer, enc,
                                    chains=out["chains"])
            mml = right_choice_loss(*marginal_candidates(candidates, place, out["weight"], out["chains"]), answer,
                                    enc)
            assert torch.isclose(whole.loss, plain.loss, rtol=1e-12)
            g_whole, g_plain, g_credit, g_mml = (torch.autograd.grad(x, leaves["program"], retain_graph=True)[0]
                                                 for x in (whole.loss, plain.loss, loss, mml))
            torch.testing.assert_close(g_whole - g_plain, g_credit - g_mml, rtol=1e-7, atol=1e-10)
            assert (g_credit - g_mml).abs().max() > 1e-3  # the power changes the gradient
        else:
            brute, per = _brute_force(model, inputs, chains, weight)
            V = enc.modulus
            memory = enc.decode(brute["memory"].detach()).view(batch, chains.shape[1], V, -1)
            registers = enc.decode(brute["registers"].detach()).view(batch, chains.shape[1], V, -1)[..., read]
            w = brute["weight"].view(batch, chains.shape[1], V)
            place = brute["readout"].view(batch, chains.shape[1], V, -1)[:, :, 0]  # (batch, count, places)
            total = []
            for q in range(batch):
                terms = []
                for k in range(chains.shape[1]):
                    states = {}
                    for v in range(V):
                        key = tuple(memory[q, k, v].tolist()) + tuple(registers[q, k, v].tolist())
                        states.setdefault(key, []).append(v)
                    for key, values in states.items():
                        s = w[q, k, values].sum()
                        if s.detach() <= 0:
                            continue
                        v0 = values[0]
                        for j, p in enumerate(c.readouts):
                            got = memory[q, k, v0, : answer.shape[1]] if p == "memory" else torch.cat(
                                [registers[q, k, v0, read.index(int(p[1:]))].view(1),
                                 torch.zeros(answer.shape[1] - 1, dtype=torch.long)])
                            if torch.equal(got, answer[q]):
                                terms.append((s * place[q, k, j]) ** power)
                if terms:
                    total.append(-torch.log(torch.stack(terms).sum()) / power)
            loss = torch.stack(total).sum() / batch
        loss.backward()
        losses.append(loss.detach())
        grads.append((leaves["registers"].grad.clone(), leaves["program"].grad.clone()))
    assert losses[0] != 0
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-9, atol=1e-12)
    for got, expected in zip(grads[0], grads[1]):
        assert expected.abs().sum() > 0
        torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-10)
