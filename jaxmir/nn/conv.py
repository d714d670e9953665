"""Convolution with a matmul weight gradient: the same numbers, much faster on XLA:CPU.

jaxlib 0.10's CPU backend computes a convolution's weight gradient ~10-20x slower than its
forward pass (its default YNNPACK fusion picks a slow kernel for it), while plain matrix
products run near peak. `conv_general_dilated` below is a drop-in for
`lax.conv_general_dilated` (flax `nn.Conv(conv_general_dilated=...)`) whose forward pass and
input gradient are XLA's own, and whose weight gradient is k x k shifted matrix products:
    dW[i, j] = sum_{b,h,w} x_pad[b, h*s + i*d, w*s + j*d, :]^T  g[b, h, w, :]
Parameters, outputs and gradients are those of the native convolution (within float rounding),
so checkpoints are interchangeable. `resolve_conv_impl("auto")` picks it on CPU only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "native", "matmul")
_NHWC = ("NHWC", "HWIO", "NHWC")


def resolve_conv_impl(impl: str) -> str:
    """ "auto" -> "matmul" on CPU, "native" elsewhere (GPUs/TPUs have fast weight gradients)."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {', '.join(CONV_IMPLS)}, not {impl!r}")
    if impl == "auto":
        return "matmul" if jax.default_backend() == "cpu" else "native"
    return impl


def _native(x, w, strides, pads, dilation, precision):
    return lax.conv_general_dilated(
        x, w, strides, pads, rhs_dilation=dilation, dimension_numbers=_NHWC, precision=precision
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, w, strides, pads, dilation, precision):
    return _native(x, w, strides, pads, dilation, precision)


def _conv_fwd(x, w, strides, pads, dilation, precision):
    return _native(x, w, strides, pads, dilation, precision), (x, w)


def _conv_bwd(strides, pads, dilation, precision, res, g):
    x, w = res
    _, vjp_x = jax.vjp(lambda a: _native(a, w, strides, pads, dilation, precision), x)
    (dx,) = vjp_x(g)
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    b, ho, wo, _ = g.shape
    kh, kw = w.shape[:2]
    (s0, s1), (d0, d1) = strides, dilation
    taps = []
    for i in range(kh):
        for j in range(kw):
            patch = lax.slice(
                xp,
                (0, i * d0, j * d1, 0),
                (b, i * d0 + (ho - 1) * s0 + 1, j * d1 + (wo - 1) * s1 + 1, xp.shape[3]),
                (1, s0, s1, 1),
            )
            taps.append(jnp.einsum("bhwc,bhwd->cd", patch, g, precision=precision))
    dw = jnp.stack(taps).reshape(kh, kw, *w.shape[2:])
    return dx, dw.astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides: Sequence[int],
    padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
):
    """`lax.conv_general_dilated` with the matmul weight gradient for 2-D NHWC/HWIO convs;
    anything else (grouped, input-dilated, other layouts) goes to XLA unchanged."""
    native = functools.partial(
        lax.conv_general_dilated,
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    if (
        lhs.ndim != 4
        or feature_group_count != 1
        or batch_group_count != 1
        or preferred_element_type is not None
        or (lhs_dilation is not None and tuple(lhs_dilation) != (1, 1))
    ):
        return native()
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if dn != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC):
        return native()
    dilation = tuple(rhs_dilation or (1, 1))
    strides = tuple(window_strides)
    if isinstance(padding, str):
        eff = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:2], dilation, strict=True)]
        pads = lax.padtype_to_pads(lhs.shape[1:3], eff, strides, padding)
    else:
        pads = padding
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    if any(p < 0 for pair in pads for p in pair):
        return native()
    return _conv(lhs, rhs, strides, pads, dilation, precision)


def conv_fn(impl: str):
    """The `conv_general_dilated` to give flax `nn.Conv` for `impl` (auto/native/matmul)."""
    return conv_general_dilated if resolve_conv_impl(impl) == "matmul" else lax.conv_general_dilated
