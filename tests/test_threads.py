"""Small tensor work runs on one thread, forward and backward, with the same values and gradients."""

from __future__ import annotations

import torch

from diffcomp import threads


def test_run_on_one_thread_confines_forward_and_backward_and_restores_the_threads():
    seen = []

    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append(("forward", torch.get_num_threads()))
        out = (x * y).sin()
        out.register_hook(lambda g: seen.append(("backward", torch.get_num_threads())))
        return out

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x, y = torch.randn(4, 3, dtype=torch.float64, requires_grad=True), torch.randn(4, 3, dtype=torch.float64)
        out = threads.run_on_one_thread(fn, x, y)
        assert torch.get_num_threads() == 2
        out.sum().backward()
        assert torch.get_num_threads() == 2
        assert seen == [("forward", 1), ("backward", 1)]
        assert torch.allclose(out, (x * y).sin()) and torch.allclose(x.grad, y * (x * y).cos())
    finally:
        torch.set_num_threads(before)


def test_gradients_and_second_derivatives_pass_gradcheck():
    x, y = (torch.randn(3, 2, dtype=torch.float64, requires_grad=True) for _ in range(2))

    def fn(x, y):
        return threads.run_on_one_thread(lambda a, b: (a * b.exp()).tanh(), x, y)

    assert torch.autograd.gradcheck(fn, (x, y))
    assert torch.autograd.gradgradcheck(fn, (x, y))


def test_large_tensors_and_no_grad_calls_skip_the_wrapper():
    big = torch.zeros(threads.SMALL)
    assert not threads.is_small(big) and threads.is_small(big[:10])
    out = threads.run_on_one_thread(lambda a: a + 1, big.requires_grad_())
    assert out.grad_fn is not None and "OneThread" not in type(out.grad_fn).__name__
    with torch.no_grad():
        assert threads.run_on_one_thread(lambda a: a * 2, torch.ones(3)).tolist() == [2.0, 2.0, 2.0]


def test_several_outputs_and_integer_outputs_come_back_with_their_gradients():
    x, y = (torch.randn(3, 2, dtype=torch.float64, requires_grad=True) for _ in range(2))

    def fn(x, y):
        return threads.run_on_one_thread(lambda a, b: ((a * b).sin(), a.exp() + b, torch.arange(3)), x, y)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first, second, count = fn(x, y)
        assert count.tolist() == [0, 1, 2] and not count.requires_grad
        assert torch.allclose(first, (x * y).sin()) and torch.allclose(second, x.exp() + y)
        assert torch.autograd.gradcheck(lambda x, y: fn(x, y)[:2], (x, y))
        assert torch.autograd.gradgradcheck(lambda x, y: fn(x, y)[:2], (x, y))
        (grad,) = torch.autograd.grad(second.sum(), x)  # one output used, the other not
        assert torch.allclose(grad, x.exp())
    finally:
        torch.set_num_threads(before)
