"""How many threads small tensor work runs on.

The machine and the lookup ALU run hundreds of small operations a step
(tensors of a few thousand numbers). Spread over torch's intra-op threads,
each pays a barrier; on a busy machine (another process on a core) a barrier
waits for a descheduled thread, and the small operations become many times
slower. Work like that runs on one thread: :func:`one_thread` for a block of
code, :func:`run_on_one_thread` for a differentiable function whose backward
pass must be confined too (the autograd engine runs backward on the caller's
thread settings, outside any ``with`` block of the forward pass).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

#: a call whose tensors all hold fewer numbers than this runs on one thread
SMALL = 1 << 16


@contextlib.contextmanager
def one_thread(enabled: bool = True) -> Iterator[None]:
    """Run the block with torch's intra-op threads set to 1 (restored afterwards)."""
    threads = torch.get_num_threads()
    if not enabled or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def is_small(*tensors: Tensor) -> bool:
    """Whether every tensor is small enough that threads cost more than they give (CPU tensors only)."""
    return all(t.device.type == "cpu" and t.numel() < SMALL for t in tensors)


class _OneThread(torch.autograd.Function):
    """``fn(*inputs)`` with forward and backward each on one thread (the inner graph is kept, as autograd would).

    ``fn`` returns a tensor or a tuple of tensors; outputs that carry no
    gradient (integer counts) come back as they are.
    """

    @staticmethod
    def forward(ctx, fn: Callable[..., Tensor | tuple[Tensor, ...]], *inputs: Tensor):
        leaves = [x.detach().requires_grad_(x.requires_grad) for x in inputs]
        with one_thread(), torch.enable_grad():
            out = fn(*leaves)
        single = isinstance(out, Tensor)
        outs = (out,) if single else tuple(out)
        ctx.fn, ctx.leaves, ctx.outs, ctx.single = fn, leaves, outs, single
        ctx.save_for_backward(*inputs)
        ctx.mark_non_differentiable(*(o for o in outs if not o.dtype.is_floating_point))
        detached = tuple(o.detach() for o in outs)
        return detached[0] if single else detached

    @staticmethod
    def backward(ctx, *grads: Tensor):
        def differentiable(outs):
            return [(o, g) for o, g in zip(outs, grads) if o.requires_grad and g is not None]

        if torch.is_grad_enabled():  # a gradient of the gradient: differentiate fn again, on the real inputs
            inputs = ctx.saved_tensors
            wanted = [x for x in inputs if x.requires_grad]
            out = ctx.fn(*inputs)
            pairs = differentiable((out,) if ctx.single else out)
            found = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True,
                                             create_graph=True) if pairs else [None] * len(wanted))
            return (None, *(next(found) if x.requires_grad else None for x in inputs))
        wanted = [x for x in ctx.leaves if x.requires_grad]
        pairs = differentiable(ctx.outs)
        if not pairs or not wanted:  # fn did not use the inputs that need a gradient
            return (None,) * (1 + len(ctx.leaves))
        with one_thread():
            found = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True,
                                             retain_graph=True))
        return (None, *(next(found) if x.requires_grad else None for x in ctx.leaves))


def run_on_one_thread(fn: Callable[..., Tensor | tuple[Tensor, ...]], *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
    """``fn(*inputs)``, forward and backward on one thread when the inputs are small CPU tensors.

    ``fn`` returns a tensor or a tuple of tensors.
    """
    if not is_small(*inputs) or torch.get_num_threads() == 1:  # nothing to confine
        return fn(*inputs)
    if not (torch.is_grad_enabled() and any(x.requires_grad for x in inputs)):
        with one_thread():
            return fn(*inputs)
    return _OneThread.apply(fn, *inputs)


__all__ = ["one_thread", "run_on_one_thread", "is_small", "SMALL"]
