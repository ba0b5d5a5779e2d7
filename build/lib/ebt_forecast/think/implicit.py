"""Implicit-gradient training: the parameter gradient at the final candidate, not through the steps.

Backpropagating through the thinking loop (`think.gradient=unrolled`) keeps every step's
second-order graph: memory and time grow with the steps. At a candidate y* where the energy
gradient vanishes, grad_y E(y*, theta) = 0, the implicit function theorem gives

    dy*/dtheta = -H^-1 G        H = d2E/dy2 at y* (per candidate),  G = d2E/dy dtheta
    dL/dtheta  = -G^T H^-1 dL/dy*

whatever path reached y*. `attach_implicit_gradient` (what `think(..., training=True)` calls
with `think.gradient=implicit`, after running the steps without a graph) returns a tensor equal
to y* whose backward does exactly this, with no Hessian stored:

    y_out = y* - (g - g.detach()),   g = grad_y E(y*)  (one energy pass with create_graph)
    hook on y_out:  u = dL/dy_out  ->  v = (H + damping I)^-1 u   (conjugate gradient, Hessian-vector
                                                                  products grad_y (g . p))
    backward continues through -g:  dL/dtheta = -v^T dg/dtheta = -u^T (H + damping I)^-1 G

so the gradient reaches everything the energy closure reads (module parameters, a cached
context encoding) through the ordinary graph of one energy gradient: memory is that of one
step, flat in the number of steps. Shapes follow the engine's contract: x (N, *event), the
energy closure `energy_fn(x, index) -> (N,)` (engine.py), H block-diagonal over the N rows, so
CG runs per row (its own step sizes) with one batched HVP per iteration.

What it does not cover, by construction:
- The step size alpha (and Langevin noise, the start) do not move the fixed point, so they get
  no gradient: a learnable alpha keeps `.grad = None` and its optimizer group skips it.
- EBT energies are often not convex in y, and after a few steps y* is not a stationary point:
  the formula is then the gradient of a local quadratic model, not of the path actually taken.
  `damping` (lambda) keeps H + lambda I invertible where H is flat or mildly indefinite, and
  bounds the gradient (|v| <= |u| / lambda where H >= 0); where CG still meets non-positive
  curvature along a row's search direction, that row stops there (truncated CG, as Steihaug's
  trust-region solver), falling back to u / lambda if it happens at the first iteration.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

EnergyFn = Callable[[Tensor, "Tensor | None"], Tensor]


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Per-row inner products of (N, *event) tensors -> (N,)."""
    return (a * b).flatten(1).sum(1)


def _rows(values: Tensor, like: Tensor) -> Tensor:
    return values.view(-1, *[1] * (like.dim() - 1))


def damped_cg(hvp: Callable[[Tensor], Tensor], rhs: Tensor, damping: float, iters: int, tol: float = 1e-10) -> Tensor:
    """Solve (H_i + damping I) v_i = rhs_i for every row i of rhs (N, *event), H applied by `hvp`."""
    v = torch.zeros_like(rhs)
    r, p = rhs.clone(), rhs.clone()
    rs = _rowdot(r, r)
    stop_at = tol * tol * rs
    active = rs > 0
    for k in range(iters):
        if not bool(active.any()):
            break
        ap = hvp(p) + damping * p
        curvature = _rowdot(p, ap)
        step = active & (curvature > 0)
        if k == 0 and damping > 0:  # no positive curvature even with damping: the damping alone
            first = active & ~step
            v = torch.where(_rows(first, v), rhs / damping, v)
        a = torch.where(step, rs / torch.where(step, curvature, torch.ones_like(curvature)), torch.zeros_like(rs))
        v = v + _rows(a, p) * p
        r = r - _rows(a, ap) * ap
        rs_new = _rowdot(r, r)
        beta = torch.where(step, rs_new / torch.where(step, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = r + _rows(beta, p) * p
        rs = rs_new
        active = step & (rs_new > stop_at)
    return v


def attach_implicit_gradient(
    energy_fn: EnergyFn, x_star: Tensor, cg_iters: int, damping: float,
) -> tuple[Tensor, Tensor]:
    """Candidates equal to `x_star` (N, *event) whose gradient is the implicit one, and their energies (N,).

    The energies carry the graph to whatever the energy reads (dE/dtheta at fixed y*). Rows whose energy
    or gradient at y* is not finite get no gradient and keep a NaN energy."""
    x_star = x_star.detach()
    with torch.enable_grad():
        y = x_star.clone().requires_grad_(True)
        e = energy_fn(y, None)
        (g,) = torch.autograd.grad(e.sum(), y, create_graph=True)
        finite = torch.isfinite(e.detach()) & torch.isfinite(g.detach()).flatten(1).all(dim=1)
        if not bool(finite.all()):  # re-evaluate on the finite rows only: NaN rows would poison the backward
            idx = finite.nonzero().squeeze(-1)
            nan = torch.full_like(e.detach(), float("nan"))
            if idx.numel() == 0:
                return x_star, nan
            y_rows, e_rows = attach_implicit_gradient(lambda x, i: energy_fn(x, idx if i is None else idx[i]),
                                                      x_star[idx], cg_iters, damping)
            return x_star.index_copy(0, idx, y_rows), nan.index_copy(0, idx, e_rows)

        def hvp(p: Tensor) -> Tensor:
            (hp,) = torch.autograd.grad(g, y, p, retain_graph=True)
            return hp

        def implicit(u: Tensor) -> Tensor:  # dL/dy*  ->  (H + damping I)^-1 dL/dy*
            with torch.enable_grad():
                return damped_cg(hvp, u.detach(), damping, cg_iters)

        out = x_star - (g - g.detach())  # the value of y*; its backward runs through -grad_y E(y*)
        if out.requires_grad:
            out.register_hook(implicit)
    return out, e
