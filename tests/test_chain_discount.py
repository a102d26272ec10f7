"""``chain_discount``: the choice's loss prefers the shorter of two chains that answer alike.

The training loss on the decided runs is checked against brute force: every chain of the library run on the
decided parse by the reference path (the soft machine on one-hot inputs), weighed by hand
``pi(c) d^(n(c) - 1)``, ``n(c)`` the programs other than ``identity`` it runs (at least 1), in float64.
"""

from __future__ import annotations

import pytest
import torch

from diffcomp.model import build_model, build_task
from diffcomp.model.heads import chain_candidates, right_choice_loss
from reference_machine import one_thread  # noqa: F401 (an autouse fixture)
from test_argument_search import _inputs, _recipe

TYPES = ["sort", "max", "distinct", "sort_descending"]
LIBRARY = ["insertion_sort", "max", "count_distinct", "reverse", "identity"]


def _model(discount: float, **computer):
    computer = {"argument_search": False, "chain_discount": discount, **computer}
    data = _recipe("composed", TYPES, LIBRARY, computer.pop("steps", 2), **computer)
    t = build_task("composed", {"types": TYPES, "lengths": [1, 2, 3], "width": 4, "examples": 80}, seed=0)
    return build_model(data["model"], data["computer"], t).double()


def test_discount_counts_the_programs_besides_identity():
    c = _model(0.5).computer
    ids = {name: c.programs.index(name) for name in LIBRARY}
    chains = torch.tensor([[ids["max"], ids["identity"]], [ids["identity"], ids["max"]],
                           [ids["identity"], ids["identity"]], [ids["insertion_sort"], ids["max"]],
                           [ids["insertion_sort"], ids["insertion_sort"]]])
    assert c.discount(chains).tolist() == [1.0, 1.0, 1.0, 0.5, 0.5]
    assert _model(1.0).computer.discount(chains).tolist() == [1.0] * 5


@pytest.mark.parametrize("discount", [1.0, 0.3])
def test_the_choice_loss_is_the_discounted_brute_force(discount):
    model = _model(discount).train()
    c, enc = model.computer, model.computer.encoding
    batch, n = 6, len(c.programs)
    inputs, leaves = _inputs(model, batch, 3, None)
    every = torch.cartesian_prod(*[torch.arange(n)] * 2).expand(batch, -1, -1)  # (batch, n * n, 2)
    with torch.no_grad():
        runs = c._run_decided(inputs, every)
    # answers some chain gives: the outcome of a random chain, read from memory or r0
    candidates, _ = chain_candidates(model.head, {**runs, "weight": torch.ones(batch * n * n)}, n * n)
    pick = torch.randint(0, candidates.shape[1], (batch,), generator=torch.Generator().manual_seed(4))
    answer = enc.decode(candidates[torch.arange(batch), pick])

    out = c._marginal(inputs)  # the training forward's decided runs: every chain, weighed for the choice
    loss = right_choice_loss(*chain_candidates(model.head, out["decided"], out["decided"]["chains"]), answer, enc)
    loss.backward()
    got = leaves["program"].grad

    # by hand: pi(c) from the step distributions, times d^(n - 1), over the chains whose decided run is right
    inputs, leaves = _inputs(model, batch, 3, None)  # the same parse, a graph of its own
    q = inputs["program"]
    pi = q[:, 0, every[0, :, 0]] * q[:, 1, every[0, :, 1]]  # (batch, n * n)
    programs = (every[0] != c.programs.index("identity")).sum(-1).clamp_min(1)
    w = pi * discount ** (programs - 1).double()
    cands, places = chain_candidates(model.head, {**runs, "weight": torch.ones(batch * n * n)}, n * n)
    right = (enc.decode(cands) == answer.unsqueeze(1)).all(-1).view(batch, n * n, -1)
    # a chain is right at the places the readout reads it from, each weighed by the readout's probability
    place_w = places.view(batch, n * n, -1)
    expected = -torch.log((w.unsqueeze(-1) * place_w * right).sum((1, 2))).sum() / batch
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-9, atol=1e-12)
    assert leaves["program"].grad.abs().sum() > 0
    torch.testing.assert_close(got, leaves["program"].grad, rtol=1e-7, atol=1e-10)


def test_a_discount_prefers_the_shorter_of_two_right_chains():
    """The first step is 'identity' or 'insertion_sort' (equally likely), the second 'max': both chains answer a
    max question right. Without the discount the loss's gradient leaves the two first steps level; with it, it
    raises 'identity' (the chain of one program) above 'insertion_sort'."""
    for discount in (1.0, 0.5):
        model = _model(discount).train()
        c, enc = model.computer, model.computer.encoding
        ids = {name: c.programs.index(name) for name in LIBRARY}
        inputs, _ = _inputs(model, 1, 5, None)
        logits = torch.full((1, 2, len(c.programs)), -30.0, dtype=torch.float64)
        logits[0, 0, [ids["identity"], ids["insertion_sort"]]] = 0.0
        logits[0, 1, ids["max"]] = 0.0
        logits.requires_grad_()
        inputs["program"] = logits.softmax(-1)
        inputs["readout"] = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)  # read r0
        answer = torch.zeros(1, 4, dtype=torch.long)
        answer[0, 0] = enc.decode(inputs["memory"]).max()
        out = c._marginal(inputs)
        loss = right_choice_loss(*chain_candidates(model.head, out["decided"], out["decided"]["chains"]), answer,
                                 enc)
        loss.backward()
        step = -logits.grad[0, 0]  # the direction the first step's logits move
        rise = step[ids["identity"]] - step[ids["insertion_sort"]]
        if discount == 1:
            assert abs(rise) < 1e-9
        else:  # d log(p_id + d p_sort) / d(logit_id - logit_sort) at p = 1/2: (1 - d) / (1 + d)
            torch.testing.assert_close(rise, torch.tensor((1 - discount) / (1 + discount), dtype=torch.float64))


@pytest.mark.parametrize("change, message", [
    ({"chain_discount": 0.0}, "must be in"),
    ({"chain_discount": 1.5}, "must be in"),
    ({"selection": '"sample"', "samples": 1}, "selection = 'marginal'"),
])
def test_bad_chain_discount_settings_are_clear_errors(change, message):
    from diffcomp.errors import RecipeError

    with pytest.raises((ValueError, RecipeError), match=message):
        _model(0.5, **change)


def test_a_discount_without_identity_in_the_library_is_refused():
    data = _recipe("composed", ["distinct"], ["insertion_sort", "count_distinct"], 2, argument_search=False,
                   chain_discount=0.5)
    t = build_task("composed", {"types": ["distinct"], "lengths": [1, 2], "examples": 20}, seed=0)
    with pytest.raises(ValueError, match="no `identity` in the library"):
        build_model(data["model"], data["computer"], t)


def test_a_discount_on_one_program_a_question_is_refused():
    data = _recipe("mixed", ["sort", "max"], ["insertion_sort", "max", "identity"], 1, argument_search=False,
                   chain_discount=0.5)
    t = build_task("mixed", {"types": ["sort", "max"], "lengths": [1, 2], "examples": 20}, seed=0)
    with pytest.raises(ValueError, match="steps of 2 or more"):
        build_model(data["model"], data["computer"], t)


def test_a_stage_changes_the_discount_and_gets_back_what_it_replaced():
    c = _model(0.5).computer
    ids = {name: c.programs.index(name) for name in LIBRARY}
    two = torch.tensor([[ids["insertion_sort"], ids["max"]]])
    assert c.set_stage_options(chain_discount=1, explore=0.2) == {"chain_discount": 0.5, "explore": 0.0}
    assert (c.chain_discount, c.explore) == (1.0, 0.2) and isinstance(c.chain_discount, float)
    assert c.discount(two).tolist() == [1.0]  # the loss reads the stage's value
    c.set_stage_options(chain_discount=0.5, explore=0.0)
    assert c.discount(two).tolist() == [0.5]


@pytest.mark.parametrize("change, message", [
    ({"chain_discount": 0}, "must be a number in"),
    ({"explore": -1}, "explore must be a non-negative number"),
    ({"argument_loss": 1.0}, "set argument_search = true"),  # this computer tries no argument values
    ({"samples": 2}, "cannot change the computer option 'samples'.*explore, chain_discount, argument_loss"),
])
def test_a_stage_option_the_computer_cannot_train_with_changes_nothing(change, message):
    c = _model(0.5).computer
    before = {name: getattr(c, name) for name in c.stage_options}
    with pytest.raises(ValueError, match=message):
        c.set_stage_options(**{"explore": 0.3, **change})
    assert {name: getattr(c, name) for name in c.stage_options} == before
