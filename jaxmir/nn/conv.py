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
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from jaxmir.config import CONV_IMPLS

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


def _with_weight_grad(native, weight_grad):
    """``native(x, w, strides, pads, dilation, precision)`` with its input gradient from XLA and
    its weight gradient from ``weight_grad(x, w, g, strides, pads, dilation, precision)``."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
    def f(x, w, strides, pads, dilation, precision):
        return native(x, w, strides, pads, dilation, precision)

    def fwd(x, w, strides, pads, dilation, precision):
        return native(x, w, strides, pads, dilation, precision), (x, w)

    def bwd(strides, pads, dilation, precision, res, g):
        x, w = res
        _, vjp_x = jax.vjp(lambda a: native(a, w, strides, pads, dilation, precision), x)
        (dx,) = vjp_x(g)
        dw = weight_grad(x, w, g, strides, pads, dilation, precision)
        return dx, dw.astype(w.dtype)

    f.defvjp(fwd, bwd)
    return f


def _conv_weight_grad(x, w, g, strides, pads, dilation, precision):
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
    return jnp.stack(taps).reshape(kh, kw, *w.shape[2:])


_conv = _with_weight_grad(_native, _conv_weight_grad)


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
    if lhs.shape[3] <= IM2COL_MAX_CHANNELS:
        return _im2col_conv(lhs, rhs, strides, pads, dilation, precision)
    return _conv(lhs, rhs, strides, pads, dilation, precision)


IM2COL_MAX_CHANNELS = 4
"""Input channels up to which the matmul path builds the patch matrix (im2col) instead: a
stem conv on 1-2 input channels is a poor fit for both XLA's conv kernels and per-tap matrix
products (contractions of length 1-2), while the patch matrix is small (k*k*c columns)."""


def _im2col_conv(x, w, strides, pads, dilation, precision):
    """The conv as patches (b*h*w, kh*kw*c) @ kernel (kh*kw*c, o), differentiated by JAX: the
    weight gradient is one 2-D matrix product, patches^T @ g (the same contraction written over
    the 4-D patch array was ~1.5x slower on XLA:CPU: patch CNN step 31.4 -> 30.1 ms, music
    paper 917 -> 873 ms, in-process A/Bs)."""
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    kh, kw, c, o = w.shape
    (s0, s1), (d0, d1) = strides, dilation
    ho = (xp.shape[1] - (kh - 1) * d0 - 1) // s0 + 1
    wo = (xp.shape[2] - (kw - 1) * d1 - 1) // s1 + 1
    cols = [
        lax.slice(
            xp,
            (0, i * d0, j * d1, 0),
            (x.shape[0], i * d0 + (ho - 1) * s0 + 1, j * d1 + (wo - 1) * s1 + 1, c),
            (1, s0, s1, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]
    patches = jnp.concatenate(cols, axis=-1)  # column order (i, j, c) = HWIO's row order
    k = kh * kw * c
    y = jnp.matmul(patches.reshape(-1, k), w.reshape(k, o), precision=precision)
    return y.reshape(x.shape[0], ho, wo, o)


def conv_fn(impl: str):
    """The `conv_general_dilated` to give flax `nn.Conv` for `impl` (auto/native/matmul)."""
    return conv_general_dilated if resolve_conv_impl(impl) == "matmul" else lax.conv_general_dilated


# -- transposed convolution ------------------------------------------------------------------
# flax's `nn.ConvTranspose(transpose_kernel=True)` is `lax.conv_transpose`: a stride-1 conv of the
# input dilated by `strides` with the spatially flipped, in/out-swapped kernel. Its weight
# gradient is even slower on XLA:CPU than a regular conv's (it runs over the zero-dilated input).
# Only every s-th row/column of the dilated input is non-zero, so tap (i, j) of the gradient is
#     dW[i, j, o, c] = sum_{b,p,q} x[b, p, q, c] g[b, p*s + pad - (k-1-i)*d, q*s + ... , o]
# (g zero outside its range): one matrix product per tap over the undilated input.


def transpose_padding(kernel: int, stride: int, padding: str) -> tuple[int, int]:
    """`lax.conv_transpose`'s explicit padding for "SAME"/"VALID" (effective kernel size)."""
    if padding == "SAME":
        pad_len = kernel + stride - 2
        lo = kernel - 1 if stride > kernel - 1 else -(-pad_len // 2)
    elif padding == "VALID":
        pad_len = kernel + stride - 2 + max(kernel - stride, 0)
        lo = kernel - 1
    else:
        raise ValueError(f"padding must be 'SAME' or 'VALID', not {padding!r}")
    return lo, pad_len - lo


def _native_t(x, w, strides, pads, dilation, precision):
    return lax.conv_transpose(
        x,
        w,
        strides,
        pads,
        rhs_dilation=dilation,
        dimension_numbers=_NHWC,
        transpose_kernel=True,
        precision=precision,
    )


def _tconv_weight_grad(x, w, g, strides, pads, dilation, precision):
    kh, kw = w.shape[:2]
    b, hi, wi, _ = x.shape
    lo = [p[0] for p in pads]
    # pad g so that every tap's strided window stays inside it
    pad_g = []
    for ax, (k, s, d, p) in enumerate(zip((kh, kw), strides, dilation, lo, strict=True)):
        left = max(0, (k - 1) * d - p)
        right = max(0, (x.shape[1 + ax] - 1) * s + p - g.shape[1 + ax] + 1)
        pad_g.append((left, right))
    gp = jnp.pad(g, ((0, 0), *pad_g, (0, 0)))
    (s0, s1), (d0, d1) = strides, dilation
    taps = []
    for i in range(kh):
        for j in range(kw):
            r0 = lo[0] - (kh - 1 - i) * d0 + pad_g[0][0]
            c0 = lo[1] - (kw - 1 - j) * d1 + pad_g[1][0]
            window = lax.slice(
                gp,
                (0, r0, c0, 0),
                (b, r0 + (hi - 1) * s0 + 1, c0 + (wi - 1) * s1 + 1, gp.shape[3]),
                (1, s0, s1, 1),
            )
            taps.append(jnp.einsum("bpqc,bpqo->oc", x, window, precision=precision))
    return jnp.stack(taps).reshape(kh, kw, *w.shape[2:])


_tconv = _with_weight_grad(_native_t, _tconv_weight_grad)


def conv_transpose(
    x: jax.Array,
    kernel: jax.Array,
    strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    rhs_dilation: Sequence[int] | None = None,
    precision=None,
    impl: str = "matmul",
) -> jax.Array:
    """`lax.conv_transpose(..., transpose_kernel=True)` for NHWC inputs and (kh, kw, out, in)
    kernels (flax's layout); with ``impl="matmul"`` its weight gradient is per-tap matmuls."""
    dilation = tuple(rhs_dilation or (1, 1))
    strides = tuple(strides)
    if isinstance(padding, str):
        eff = [(k - 1) * d + 1 for k, d in zip(kernel.shape[:2], dilation, strict=True)]
        pads = tuple(transpose_padding(k, s, padding) for k, s in zip(eff, strides, strict=True))
    else:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if resolve_conv_impl(impl) == "native" or any(p < 0 for pair in pads for p in pair):
        return _native_t(x, kernel, strides, pads, dilation, precision)
    return _tconv(x, kernel, strides, pads, dilation, precision)


class ConvTranspose(nn.Module):
    """flax `nn.ConvTranspose(transpose_kernel=True)` for NHWC inputs with a selectable weight
    gradient (`impl`: native | matmul | auto). Same parameter names, shapes and auto-name
    ("ConvTranspose_N"), so parameter trees are interchangeable with flax's layer."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: str = "SAME"
    kernel_dilation: tuple[int, int] = (1, 1)
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    impl: str = "native"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (*self.kernel_size, self.features, x.shape[-1])
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
        bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        dtype = jnp.promote_types(x.dtype, kernel.dtype)  # flax's promote_dtype
        x = x.astype(dtype)
        y = conv_transpose(
            x,
            kernel.astype(dtype),
            self.strides,
            self.padding,
            self.kernel_dilation,
            impl=self.impl,
        )
        return y + bias.astype(y.dtype)
