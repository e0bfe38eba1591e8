"""Each rule on a small case computed by hand or by an independent formula (autograd, written
from rap-spec.md), without the engine."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from relprop.ir import Op, Ref, resolve
from relprop.rules import attnlrp, common, rap

D = torch.float64


def t(*v):
    return torch.tensor(v, dtype=D)


def run_with(env=None, shapes=None):
    return SimpleNamespace(env=env or {}, shapes=shapes or {},
                           args=lambda op: resolve(op.args, env or {}),
                           kwargs=lambda op: op.kwargs, output=lambda op: env[op.name],
                           shape=lambda n: shapes[n])


def make_op(kind, fn=None, args=(), kwargs=None, inputs=("x",), **extra):
    return Op("y", kind, fn, args, kwargs or {}, inputs, kind, **extra)


def test_passthrough_keeps_relevance_and_sums_broadcasts():
    op = make_op("passthrough")
    r = t(1, -2, 3)
    (out,) = common.passthrough(op, r, run_with(shapes={"x": r.shape}))
    assert torch.equal(out, r)
    (out,) = common.passthrough(op, t([1, 2], [3, 4]), run_with(shapes={"x": (1, 2)}))
    assert torch.equal(out, t([4, 6]))


def test_max_pool_gives_everything_to_the_winner():
    x = t([[1, 3], [2, 0]]).view(1, 1, 2, 2)
    op = make_op("pool", F.max_pool2d, (Ref("x"), 2))
    env = {"x": x, "y": F.max_pool2d(x, 2)}
    (out,) = common.pool(op, t(5).view(1, 1, 1, 1), run_with(env))
    assert torch.equal(out, t([[0, 5], [0, 0]]).view(1, 1, 2, 2))


def test_avg_pool_shares_in_proportion_to_the_inputs():
    x = t([[1, 3], [2, 2]]).view(1, 1, 2, 2)
    op = make_op("pool", F.avg_pool2d, (Ref("x"), 2))
    env = {"x": x, "y": F.avg_pool2d(x, 2)}
    (out,) = common.pool(op, t(4).view(1, 1, 1, 1), run_with(env))
    assert torch.allclose(out, t([[0.5, 1.5], [1, 1]]).view(1, 1, 2, 2))


def test_add_splits_by_contribution():
    op = make_op("add", torch.add, (Ref("a"), Ref("b")), inputs=("a", "b"))
    env = {"a": t(1, -1), "b": t(3, 3), "y": t(4, 2)}
    ra, rb = common.add(op, t(8, 4), run_with(env))
    assert torch.allclose(ra, t(2, -2)) and torch.allclose(rb, t(6, 6))


def test_add_of_a_tensor_with_itself_gets_all_of_it():
    op = make_op("add", torch.add, (Ref("a"), Ref("a")), inputs=("a",))
    (ra,) = common.add(op, t(8.0), run_with({"a": t(2.0), "y": t(4.0)}))
    assert torch.allclose(ra, t(8.0))


def test_movement_slices_cat_and_crops_padding():
    op = make_op("movement", torch.cat, ([Ref("a"), Ref("b")], 1), inputs=("a", "b"))
    ra, rb = common.movement(op, t([1, 2, 3]), run_with(shapes={"a": (1, 1), "b": (1, 2)}))
    assert torch.equal(ra, t([1])) and torch.equal(rb, t([2, 3]))
    op = make_op("movement", F.pad, (Ref("x"), (1, 1)))
    (rx,) = common.movement(op, t([9, 1, 2, 9]), run_with(shapes={"x": (1, 2)}))
    assert torch.equal(rx, t([1, 2]))


VIEWS = {"view": (torch.Tensor.view, (6, 4)), "flatten": (torch.flatten, (1,)),
         "unflatten": (torch.unflatten, (1, (2, 3))), "permute-list": (torch.permute, ([2, 0, 1],)),
         "permute-args": (torch.Tensor.permute, (1, -1, 0)),
         "transpose": (torch.Tensor.transpose, (0, 2)), "unsqueeze": (torch.unsqueeze, (1,)),
         "nn.Flatten": (None, ())}


@pytest.mark.parametrize("name", VIEWS)
def test_a_reshape_or_permutation_routes_relevance_as_its_gradient_does(name):
    """Reshapes and permutations are undone directly; the result is the op's vector-Jacobian
    product (autograd, independent of the rule)."""
    from relprop.ir import ModuleCall
    fn, rest = VIEWS[name]
    module = torch.nn.Flatten()  # held here: the graph holds modules by weak reference
    fn = ModuleCall(module) if fn is None else fn
    x = torch.randn(2, 6, 2, dtype=D).requires_grad_()
    y = fn(x, *rest)
    r = torch.randn(y.shape, dtype=D)
    op = make_op("movement", fn, args=(Ref("x"), *rest))
    (ours,) = common.movement(op, r, run_with({"x": x.detach()}, {"x": x.shape}))
    (expected,) = torch.autograd.grad(y, x, r)
    assert ours.shape == x.shape and torch.equal(ours, expected)


def test_batchnorm_passes_relevance_through():
    r = t(1, -2)
    assert torch.equal(common.batchnorm(make_op("batchnorm"), r, run_with())[0], r)


def test_shift_moves_nonzero_entries_uniformly():
    c = torch.tensor([[1, 0, 3], [2, 2, 0]], dtype=D)  # two samples
    shifted = rap.shift(c, torch.tensor([[2], [1]], dtype=D))
    assert torch.allclose(shifted, torch.tensor([[0, 0, 2], [0.5, 0.5, 0]], dtype=D))
    assert torch.equal(rap.shift(t([0.0, 0.0]).view(1, 2), t([5.0])), t([0.0, 0.0]).view(1, 2))


def test_output_layer_by_hand():
    # x = [1, 2], W = [[1, -1]], b = 0.5: C = [0.5, -1], logit -0.5,
    # R = |C| * sum(C) / sum(|C|) = [-1/6, -1/3].
    op = make_op("linear", input_nonneg=True)
    out = rap.output_layer(op, t([1, 2]), t([1, -1]), t(0.5), t([1.0]), score=t(-0.5))
    assert torch.allclose(out, t([-1 / 6, -1 / 3]))


def test_input_layer_zb_by_hand():
    # x = [1, -1], W = [[2, 1]], L = -1, H = 1: Z = 4, R = 2 -> R_in = [2, 0].
    op = make_op("linear")
    out = rap.input_layer(op, t([1, -1]), t([2, 1]), t([2.0]))
    assert torch.allclose(out, t([2, 0]))


def _sd(a, b):
    return torch.where(b != 0, a / b.masked_fill(b == 0, 1), torch.zeros_like(a))


def _reference_group(lin, x, w, r, linear):
    """rap-spec §3 for one sign group, term by term with autograd (independent of relprop)."""
    xg = x.clone().requires_grad_()
    if (x >= 0).all():
        za, zb = lin(xg, w.clamp(min=0)), -lin(xg, w.clamp(max=0))
    else:
        za, zb = -lin(xg, w.clamp(min=0)), lin(xg, w.clamp(max=0))

    def push(z, s):
        return (x * torch.autograd.grad(z, xg, s, retain_graph=True)[0]).detach()

    rp, rn = r.clamp(min=0), r.clamp(max=0)
    c = push(za, _sd(rp, za)) + push(zb, _sd(r, za + zb) * (zb != 0))
    c = c + (push(za, _sd(rn, za)) if linear else push(zb, _sd(rn, zb)))
    dims = tuple(range(1, c.dim()))
    nz = (c != 0).to(D)
    delta = _sd(c.sum(dims, keepdim=True) - r.sum(dims, keepdim=True), nz.sum(dims, keepdim=True))
    return c - delta * nz, (za + zb).detach()


def _reference_hidden(lin, x, w, r, linear):
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    if (x >= 0).all():
        return _reference_group(lin, xp, w, r, linear)[0]
    _, mp = _reference_group(lin, xp, w, r, linear)
    _, mn = _reference_group(lin, xn, w, r, linear)
    rp = torch.where(mp + mn == 0, r, r * _sd(mp, mp + mn))
    rn = r * _sd(mn, mp + mn)
    return _reference_group(lin, xp, w, rp, linear)[0] + _reference_group(lin, xn, w, rn, linear)[0]


def random_conv(cfg, size, seed, signed):
    """A seeded generator, the conv's settings, a batch of two inputs (ReLU'd unless ``signed``)
    and a weight for ``cfg``."""
    g = torch.Generator().manual_seed(seed)
    kw = {k: cfg[k] for k in ("stride", "padding", "dilation", "groups")}
    x = torch.randn(2, cfg["cin"], size, size, generator=g, dtype=D)
    x = x if signed else x.relu()
    w = torch.randn(cfg["cout"], cfg["cin"] // cfg["groups"], cfg["k"], cfg["k"], generator=g,
                    dtype=D)
    return g, kw, x, w


CONVS = [dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, k=3, cin=4, cout=6),
         dict(stride=(2, 2), padding=(0, 0), dilation=(1, 1), groups=1, k=1, cin=4, cout=6),
         dict(stride=(2, 2), padding=(3, 3), dilation=(1, 1), groups=1, k=7, cin=3, cout=5),
         dict(stride=(1, 1), padding=(2, 2), dilation=(2, 2), groups=2, k=3, cin=4, cout=6),
         dict(stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=4, k=3, cin=4, cout=4)]


@pytest.mark.parametrize("signed", [False, True], ids=["nonneg", "signed"])
@pytest.mark.parametrize("cfg", CONVS, ids=["3x3", "1x1s2", "7x7s2", "dilated-grouped",
                                             "depthwise"])
def test_hidden_conv_matches_independent_formula(cfg, signed):
    g, kw, x, w = random_conv(cfg, 9, 0, signed)
    out = F.conv2d(x, w, None, **kw)
    r = torch.randn(out.shape, generator=g, dtype=D) * (out.abs() > 0.3)
    op = make_op("conv", F.conv2d, kwargs=kw, input_nonneg=not signed)
    ours = rap.hidden_layer(op, x, w, r)

    def lin(a, b):
        return F.conv2d(a, b, None, **kw)
    expected = _reference_hidden(lin, x, w, r, linear=False)
    assert torch.allclose(ours, expected, atol=1e-12, rtol=1e-9)
    assert torch.allclose(ours.sum((1, 2, 3)), r.sum((1, 2, 3)))
    b = torch.randn(cfg["cout"], generator=g, dtype=D)
    assert torch.allclose(_through_rap_forward(op, x, w, b, r, F.conv2d(x, w, b, **kw)),
                          expected, atol=1e-12, rtol=1e-9)


def _through_rap_forward(op, x, w, b, r, output):
    """``hidden_layer`` on what RAP's own forward of the layer kept (for a non-negative input:
    Lin(x, [W+; |W-|]), whose difference plus ``b`` must be the layer's ``output``)."""
    out, kept = rap.layer_forward(op, (x, w, b), op.kwargs, {"role": "hidden"})
    assert (kept is None) == (not op.input_nonneg)
    assert torch.allclose(out, output, atol=1e-12, rtol=1e-12)
    return rap.hidden_layer(op, x, w, r, kept)


# Output units without relevance (attention's Q and K under CP-LRP): none, a run of them (the
# rules map only the live run, a slice), scattered ones (an index), all of them.
DEAD_UNITS = {"all-live": [], "run": [0, 1, 2, 3], "scattered": [1, 3, 4, 6], "all-dead": range(7)}


@pytest.mark.parametrize("dead", DEAD_UNITS)
@pytest.mark.parametrize("block_bytes", [None, 3 * 2 * 10 * 8], ids=["whole", "blocks-of-3"])
@pytest.mark.parametrize("signed", [False, True], ids=["nonneg", "signed"])
def test_hidden_linear_matches_independent_formula(signed, block_bytes, dead, monkeypatch):
    if block_bytes is not None:  # a large layer is propagated a few output units at a time
        monkeypatch.setattr(rap, "BLOCK_BYTES", block_bytes)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 10, generator=g, dtype=D)
    x = x if signed else x.relu()
    w = torch.randn(7, 10, generator=g, dtype=D)
    r = torch.randn(3, 7, generator=g, dtype=D)
    r[:, list(DEAD_UNITS[dead])] = 0
    op = make_op("linear", F.linear, input_nonneg=not signed)
    ours = rap.hidden_layer(op, x, w, r)
    expected = _reference_hidden(F.linear, x, w, r, linear=True)
    assert torch.allclose(ours, expected, atol=1e-12)
    b = torch.randn(7, generator=g, dtype=D)
    if block_bytes is None:  # a blocked layer's forward runs as it is: nothing kept
        assert torch.allclose(_through_rap_forward(op, x, w, b, r, F.linear(x, w, b)),
                              expected, atol=1e-12)
    else:
        assert rap.layer_forward(op, (x, w, b), {}, {"role": "hidden"})[1] is None


def test_live_units_of_one_sample_without_a_batch_dim():
    from relprop.rules.algebra import live_units
    op = make_op("linear", F.linear)
    assert live_units(op, t(0, 0, 0, 1)) == slice(3, 4)  # a run of live units: a slice
    assert torch.equal(live_units(op, t(0, 2, 0, 1)), torch.tensor([1, 3]))
    assert live_units(op, t(1, 2, 3, 4)) is None


@pytest.mark.parametrize("dead", DEAD_UNITS)
def test_lrp_attn_linear_matches_lrp_0(dead):
    """lrp-attn's Linear rule, mapping back only the live units, against LRP-0 written out:
    ``R_i = Σ_j x_i w_ji R_j / z_j`` (0 where ``z_j`` is 0)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 10, generator=g, dtype=D)
    w = torch.randn(7, 10, generator=g, dtype=D)
    b = torch.randn(7, generator=g, dtype=D)
    z = F.linear(x, w, b)
    r = torch.randn(2, 5, 7, generator=g, dtype=D)
    r[..., list(DEAD_UNITS[dead])] = 0
    op = make_op("linear", F.linear, args=(Ref("x"), w, b))
    run = run_with({"x": x, "y": z})
    run.note = lambda op: {}
    (ours,) = attnlrp.layer(op, r, run)
    expected = torch.einsum("bti,ji,btj->bti", x, w, _sd(r, z))
    assert torch.allclose(ours, expected, atol=1e-12)


@pytest.mark.parametrize("as_module", [True, False], ids=["nn.LayerNorm", "F.layer_norm"])
def test_lrp_attn_layer_norm_keeps_sigma_from_its_forward(as_module):
    """lrp-attn's own LayerNorm forward gives the layer's output bit for bit and keeps 1/σ, and
    the rule on it equals the rule that computes σ itself: ``x ⊙ (g − mean g)/σ``."""
    from relprop.ir import ModuleCall
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 8, generator=g, dtype=D) * 3 + 1
    norm = torch.nn.LayerNorm(8, eps=1e-6, dtype=D)
    with torch.no_grad():
        norm.weight.normal_(generator=g)
        norm.bias.normal_(generator=g)
    if as_module:
        op = make_op("norm", ModuleCall(norm), args=(Ref("x"),))
    else:
        op = make_op("norm", F.layer_norm, args=(Ref("x"), (8,), norm.weight, norm.bias, 1e-6))
    out, rstd = attnlrp.layer_norm_forward(op, resolve(op.args, {"x": x}), op.kwargs, {})
    assert torch.equal(out, norm(x).detach())
    sigma = (x.var(-1, unbiased=False, keepdim=True) + 1e-6).sqrt()
    assert torch.allclose(rstd, 1 / sigma, rtol=1e-12)
    r = torch.randn(2, 5, 8, generator=g, dtype=D)
    run = run_with({"x": x, "y": out})
    gr = r / out * norm.weight
    expected = x * (gr - gr.mean(-1, keepdim=True)) / sigma
    for kept in (rstd, None):  # from the forward; computed by the rule
        run.by_product = lambda op, kept=kept: kept
        assert torch.allclose(attnlrp.norm(op, r, run)[0], expected.detach(), atol=1e-12)


# --------------------------------------------------------------------------- matrix forms
# The output and input layer rules on convolutions with padding, stride, dilation and groups,
# against the formulas of rap-spec §2/§7.4 and §4/§7.3 written with the convolution as a dense
# matrix (as Zennit's rule tests do), independent of relprop's convolution algebra.

def conv_matrix(w, in_shape, **kw):
    """The dense (out, in) matrix of ``x -> conv2d(x, w)`` on one image of ``in_shape``."""
    n = int(torch.tensor(in_shape).prod())
    basis = torch.eye(n, dtype=D).view(n, *in_shape)
    return F.conv2d(basis, w, None, **kw).flatten(1).T


def _msd(a, b):
    return torch.where(b != 0, a / torch.where(b != 0, b, torch.ones_like(b)), torch.zeros_like(a))


def output_rule_matrix(x, w, b, d, score, kw):
    """rap-spec §2 with §7.4's normalisation, one image, the layer as matrices A+ and A-."""
    ap, an = conv_matrix(w.clamp(min=0), x.shape, **kw), conv_matrix(w.clamp(max=0), x.shape, **kw)
    xv = x.flatten()
    xp, xn = xv.clamp(min=0), xv.clamp(max=0)
    zpp, zpn, znp, znn = ap @ xp, an @ xp, ap @ xn, an @ xn
    dv = d.flatten()
    pos, neg = (dv * (zpp + znn)).sum(), (dv * (zpn + znp)).sum()
    bias = b.repeat_interleave(len(dv) // len(b))
    bp, bn = bias * dv * _msd(pos, pos + neg), bias * dv * _msd(neg, pos + neg)
    c = (xp * (ap.T @ _msd(dv * zpp + bp, zpp)) + xp * (an.T @ _msd(dv * zpn + bn, zpn))
         + xn * (ap.T @ _msd(dv * znp, znp)) + xn * (an.T @ _msd(dv * znn, znn)))
    return (c.abs() * _msd(score, c.abs().sum())).view(x.shape)


def input_rule_matrix(x, w, r, kw, support):
    """rap-spec §4 with §7.3's flat share, one image; ``support`` is 1 on the image and 0 on an
    explicit zero-padding border."""
    a = conv_matrix(w, x.shape, **kw)
    ap, an = conv_matrix(w.clamp(min=0), x.shape, **kw), conv_matrix(w.clamp(max=0), x.shape, **kw)
    ones = conv_matrix(torch.ones_like(w), x.shape, **kw)
    xv, sv, rv = x.flatten(), support.flatten(), r.flatten()
    low, high = xv[sv > 0].min(), xv[sv > 0].max()
    z = a @ xv - low * (ap @ sv) - high * (an @ sv)
    s = _msd(rv, z)
    out = xv * (a.T @ s) - low * sv * (ap.T @ s) - high * sv * (an.T @ s)
    lost = rv * (z == 0)
    out = out + sv * (ones.T @ _msd(lost, ones @ sv))
    return out.view(x.shape)


LAYER_CONVS = [dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, k=3, cin=3, cout=4),
               dict(stride=(2, 2), padding=(3, 3), dilation=(1, 1), groups=1, k=7, cin=3, cout=4),
               dict(stride=(2, 2), padding=(2, 2), dilation=(2, 2), groups=1, k=3, cin=2, cout=3),
               dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, k=1, cin=4, cout=3),
               dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=2, k=3, cin=4, cout=4)]
LAYER_IDS = ["3x3p1", "7x7s2p3", "dilated", "1x1", "grouped"]


@pytest.mark.parametrize("signed", [False, True], ids=["nonneg", "signed"])
@pytest.mark.parametrize("cfg", LAYER_CONVS, ids=LAYER_IDS)
def test_output_layer_matches_matrix_form(cfg, signed):
    g, kw, x, w = random_conv(cfg, 7, 2, signed)
    b = torch.randn(cfg["cout"], generator=g, dtype=D)
    out = F.conv2d(x, w, b, **kw)
    d = torch.zeros_like(out)
    # The target class's map, every position (a spatial head), summing to 1 per sample as the
    # engine starts it: the rule normalises each image to Σd·score.
    d[0, 1], d[1, 2] = 1 / out[0, 0].numel(), 1 / out[0, 0].numel()
    score = (out * d).sum((1, 2, 3))
    op = make_op("conv", F.conv2d, kwargs=kw, input_nonneg=not signed)
    ours = rap.output_layer(op, x, w, b, d, score)
    for i in range(2):
        expected = output_rule_matrix(x[i], w, b, d[i], score[i], kw)
        assert torch.allclose(ours[i], expected, rtol=1e-9, atol=1e-12)
    assert torch.allclose(ours.sum((1, 2, 3)), score)


@pytest.mark.parametrize("explicit_pad", [None, (0, 1, 0, 1)], ids=["own-padding", "zero-pad"])
@pytest.mark.parametrize("cfg", LAYER_CONVS, ids=LAYER_IDS)
def test_input_layer_matches_matrix_form(cfg, explicit_pad):
    """Small integer weights and inputs on a grid of quarters keep every sum exact, so ``Z = 0``
    means the same in both forms; image 1 is constant, so §7.3's flat share carries all of it."""
    g = torch.Generator().manual_seed(3)
    kw = {k: cfg[k] for k in ("stride", "padding", "dilation", "groups")}
    x = torch.randint(-4, 5, (2, cfg["cin"], 7, 7), generator=g).to(D) / 4
    x[1] = 0.75
    w = torch.randint(-3, 4, (cfg["cout"], cfg["cin"] // cfg["groups"], cfg["k"], cfg["k"]),
                      generator=g).to(D)
    support = torch.ones(1, cfg["cin"], 7, 7, dtype=D)
    if explicit_pad is not None:
        x, support = F.pad(x, explicit_pad), F.pad(support, explicit_pad)
    out = F.conv2d(x, w, None, **kw)
    # Relevance at an output that sees only the padding border has nowhere to go on the image
    # (in §4 and §7.3 alike); the conservation check below is for outputs that see the image.
    sees_image = F.conv2d(support, torch.ones_like(w), None, **kw) > 0
    r = torch.randn(out.shape, generator=g, dtype=D) * sees_image
    op = make_op("conv", F.conv2d, kwargs=kw)
    ours = rap.input_layer(op, x, w, r, explicit_pad)
    for i in range(2):
        expected = input_rule_matrix(x[i], w, r[i], kw, support[0])
        assert torch.allclose(ours[i], expected, rtol=1e-9, atol=1e-12)
    assert torch.allclose(ours.sum((1, 2, 3)), r.sum((1, 2, 3)))
    assert (ours * (1 - support)).abs().max() == 0  # nothing on an explicit padding border


def test_relevance_at_outputs_that_read_only_padding_is_shared_over_the_image():
    """A detector's batch is padded to a multiple of 32 and read by a 7x7 convolution: the
    layers above can hand relevance to outputs that see the border only. It goes evenly over
    the image (it used to be lost: 12 % of a random RetinaNet's logit)."""
    g = torch.Generator().manual_seed(3)
    x = F.pad(torch.rand(1, 2, 6, 6, generator=g, dtype=D), (0, 0, 0, 6))
    w = torch.randn(3, 2, 3, 3, generator=g, dtype=D)
    kw = dict(stride=1, padding=1, dilation=1, groups=1)
    r = torch.zeros(1, 3, 12, 6, dtype=D)
    r[0, :, 8:] = 0.5  # rows 8-11 read rows 7-11 of the input: the border only
    op = make_op("conv", F.conv2d, kwargs=kw)
    ours = rap.input_layer(op, x, w, r, (0, 0, 0, 6))
    assert ours.sum() == pytest.approx(r.sum().item(), rel=1e-12)
    assert ours[..., 6:, :].abs().max() == 0
    assert torch.allclose(ours[..., :6, :], torch.full_like(ours[..., :6, :], ours[0, 0, 0, 0]))


# rap-spec §8: products, gates and pieces --------------------------------------------------


class _Gated(torch.nn.Module):
    """A squeeze-and-excitation block before a classifier; its gate computed from the input, or
    a fixed tensor (then ``h * gate`` is a tensor times a constant, another code path)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc1, self.fc2 = torch.nn.Conv2d(8, 4, 1), torch.nn.Conv2d(4, 8, 1)
        self.head = torch.nn.Linear(8 * 8 * 8, 5)
        self.register_buffer("fixed", None)

    def gate(self, h):
        return torch.sigmoid(self.fc2(torch.nn.functional.silu(self.fc1(h.mean((2, 3),
                                                                              keepdim=True)))))

    def forward(self, x):
        h = torch.nn.functional.silu(self.conv(x))
        return self.head((h * (self.gate(h) if self.fixed is None else self.fixed)).flatten(1))


@pytest.mark.parametrize("method", ["rap", "rap-stable", "lrp-epsilon", "lrp-epsilon-plus"])
def test_a_gate_is_a_weight(method):
    """§8.2: all relevance goes to the gated signal, none into the gate's branch: the map equals
    that of the same network with the gate's value fixed as a constant."""
    import relprop
    gated = _Gated().double().eval()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fixed = gated.gate(torch.nn.functional.silu(gated.conv(x)))
    constant = _Gated().double().eval()
    constant.fixed = fixed
    ours = relprop.explain(gated, x, [2], method=method)
    reference = relprop.explain(constant, x, [2], method=method)
    assert torch.allclose(ours.score, reference.score, rtol=1e-12)
    assert torch.allclose(ours.relevance, reference.relevance, rtol=1e-9, atol=1e-12)
    assert relprop.explainer(gated, method).graph.op(
        next(op.name for op in relprop.explainer(gated, method).graph.ops
             if op.kind == "product")).gated == (False, True)


class _Product(torch.nn.Module):
    """A GLU-like product of two signals (neither is a gate)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = torch.nn.Linear(6, 4), torch.nn.Linear(6, 4)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.a(x) * torch.tanh(self.b(x)))


def test_a_product_of_two_signals_gives_each_half():
    import relprop
    model = _Product().double().eval()
    x = torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    explainer = relprop.explainer(model, "rap")
    product = next(op.name for op in explainer.graph.ops if op.kind == "product")
    at_product = explainer.explain(x, [1, 2], layer=product).relevance
    at_a = explainer.explain(x, [1, 2], layer="a").relevance
    at_b = explainer.explain(x, [1, 2], layer="b").relevance
    assert torch.allclose(at_a, at_product / 2) and torch.allclose(at_b, at_product / 2)
    whole = explainer.explain(x, [1, 2])
    assert (whole.delta.abs() <= 1e-9 * whole.score.abs().clamp(min=1)).all()


class _Pieces(torch.nn.Module):
    def __init__(self, chunked: bool):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.head = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Linear(8 * 16, 4)
        self.chunked = chunked

    def forward(self, x):
        h = torch.relu(self.conv(x))
        if self.chunked:
            a, b = h.chunk(2, dim=1)
        else:
            a, b = h[:, :4], h[:, 4:]
        return self.head(torch.cat([b, a], 1).flatten(1))


@pytest.mark.parametrize("method", ["rap", "lrp-epsilon-plus"])
def test_pieces_of_a_chunk_are_slices(method):
    """§8.4: ``chunk`` (a tuple of pieces) is explained exactly as the same pieces sliced."""
    import relprop
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    chunked = relprop.explain(_Pieces(True).double().eval(), x, [0, 3], method=method)
    sliced = relprop.explain(_Pieces(False).double().eval(), x, [0, 3], method=method)
    assert torch.allclose(chunked.relevance, sliced.relevance, rtol=1e-12, atol=1e-15)
    assert chunked.relevance.abs().sum() > 0


def test_a_tuple_used_whole_is_refused_in_words():
    import relprop

    class Whole(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(6, 2)

        def forward(self, x):
            return self.head(torch.cat(x.chunk(2, dim=1), 1))
    with pytest.raises(relprop.UnsupportedOperation, match="pieces of a tuple taken one at"):
        relprop.explain(Whole(), torch.randn(2, 6), method="rap")


class _Residual(torch.nn.Module):
    def __init__(self, inplace: bool, activation=torch.nn.SiLU):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.act = activation(inplace=inplace)
        self.head = torch.nn.Linear(3 * 16, 4)

    def forward(self, x):
        return self.head(self.act(self.conv(x) + x).flatten(1))


@pytest.mark.parametrize("activation", [torch.nn.SiLU, torch.nn.LeakyReLU, torch.nn.ELU,
                                        torch.nn.Hardswish])
def test_an_in_place_activation_after_a_sum_is_explained_as_one_that_is_not(activation):
    """The rule at the sum reads the sum; an activation module built with inplace=True must not
    overwrite it before the sweep reaches it."""
    import relprop
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    copy_ = _Residual(False, activation).double().eval()
    inplace = _Residual(True, activation).double().eval()
    for method in ("rap", "rap-stable", "lrp-epsilon"):
        want = relprop.explain(copy_, x, [0, 1], method=method)
        got = relprop.explain(inplace, x, [0, 1], method=method)
        assert torch.allclose(got.score, want.score, rtol=1e-12)
        assert torch.allclose(got.relevance, want.relevance, rtol=1e-9, atol=1e-12), method


def _pool_matrix(x_shape, fn):
    """The (out, in) matrix of a linear pooling ``fn`` on one image, column by column."""
    n_in = int(torch.tensor(x_shape).prod())
    cols = [fn(torch.eye(n_in, dtype=D)[j].view(x_shape)).flatten() for j in range(n_in)]
    return torch.stack(cols, 1)


@pytest.mark.parametrize("epsilon", [0.0, 0.01, 0.5])
@pytest.mark.parametrize("pool", [(2, 2, 0), (3, 1, 1)])
def test_average_pool_matches_the_stabilised_matrix_form(epsilon, pool):
    """rap-spec §9.2/§7.5: ``R_j = Σ_i w_ij (x_j + ε s_i |x_j|) R_i / (z_i + ε s_i Σ_j w_ij |x_j|)``
    on a signed input, against the pooling's own matrix; one window is all zeros, where the
    flat share gives the relevance to the window in proportion to W."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, 4, 4, generator=g, dtype=D)
    x[..., :2, :2] = 0  # the first 2x2 window sums to 0 (and has no input to share it by)
    kernel, stride, padding = pool
    fn = lambda v: F.avg_pool2d(v, kernel, stride, padding)  # noqa: E731
    op = make_op("pool", F.avg_pool2d, (Ref("x"), kernel, stride, padding))
    z = fn(x)
    relevance = torch.randn(z.shape, generator=g, dtype=D)
    env = {"x": x, "y": z}
    run = run_with(env)
    run.options = {"epsilon": epsilon}
    (out,) = rap.positive_map(op, relevance, run, epsilon)
    w = _pool_matrix(x.shape[1:], lambda v: fn(v.unsqueeze(0))[0])
    xv, zv, rv = x.flatten(), z.flatten(), relevance.flatten()
    s = torch.where(zv >= 0, 1.0, -1.0).to(D)
    den = zv + epsilon * s * (w @ xv.abs())
    expected = torch.zeros_like(xv)
    for i in range(len(zv)):
        if den[i] != 0:
            expected += w[i] * (xv + epsilon * s[i] * xv.abs()) * rv[i] / den[i]
        else:
            expected += w[i] * rv[i] / w[i].sum()
    assert torch.allclose(out.flatten(), expected, rtol=1e-12, atol=1e-14)
    assert torch.isclose(out.sum(), relevance.sum(), rtol=1e-12)


@pytest.mark.parametrize("epsilon", [None, 0.01])
def test_a_sum_of_zeros_shares_its_relevance_equally(epsilon):
    """Where both operands of a sum are 0 (two ReLU zeros) but relevance arrives, each gets half
    (§7.3's flat share); elsewhere the z-rule (§5) or its stabilised form (§7.5)."""
    op = make_op("add", torch.add, (Ref("a"), Ref("b")), inputs=("a", "b"))
    a, b = t(0, 1, 0, 2), t(0, 3, 0, -1)
    env = {"a": a, "b": b, "y": a + b}
    r = t(4, 8, -6, 2)
    run = run_with(env)
    if epsilon is None:
        ra, rb = common.add(op, r, run)
        expected_a, expected_b = t(2, 2, -3, 4), t(2, 6, -3, -2)
    else:
        run.options = {"epsilon": epsilon}
        ra, rb = rap.stable_add(op, r, run)
        z, s = a + b, torch.where(a + b >= 0, 1.0, -1.0).to(D)
        den = z + epsilon * s * (a.abs() + b.abs())
        share = lambda v: torch.where(den == 0, r / 2, r * (v + epsilon * s * v.abs()) / den)  # noqa: E731
        expected_a, expected_b = share(a), share(b)
    assert torch.allclose(ra, expected_a) and torch.allclose(rb, expected_b)
    assert torch.allclose(ra + rb, r)


def test_a_difference_of_two_signals_is_a_sum_with_the_negation():
    """rap-spec §9.3: ``a - b`` becomes ``a + (-b)`` in the graph; the sum's z-rule then gives
    ``b`` the share of ``-b``, and together they conserve."""
    import torch.nn as nn

    class Difference(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3), nn.Linear(16, 2)

        def forward(self, x):
            return self.fc((torch.relu(self.a(x)) - torch.relu(self.b(x))).flatten(1))

    import relprop
    torch.manual_seed(0)
    model = Difference().double().eval()
    graph = relprop.RAP(model).graph
    kinds = {op.name: op.kind for op in graph.ops}
    assert kinds["sub"] == "add" and kinds["sub_negated"] == "passthrough"
    assert graph.op("sub_negated").fn is torch.neg
    x = torch.randn(2, 3, 4, 4, dtype=D)
    e = relprop.explain(model, x, method="rap")
    assert torch.allclose(e.relevance.flatten(1).sum(1), e.score, rtol=1e-10)


def test_a_quotient_of_two_signals_gives_the_numerator_everything():
    """``a / b`` with both from the input (a norm written out, ConViT's attention renormalised):
    the denominator is a weight (rap-spec §8.2, §8.3), all relevance to the numerator; the
    2-norm as a reduction conserves by the pooling z-rule (R_j = R x_j² / Σ x²)."""
    import torch.nn as nn

    import relprop

    class Normalised(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(16, 2)

        def forward(self, x):
            h = self.conv(x)
            return self.fc((h / h.norm(dim=1, keepdim=True)).flatten(1))

    torch.manual_seed(0)
    model = Normalised().double().eval()
    graph = relprop.RAP(model).graph
    division = next(op for op in graph.ops if op.name == "truediv")
    assert division.kind == "product" and division.gated == (False, True)
    x = torch.randn(2, 3, 4, 4, dtype=D)
    for method in ("rap", "rap-stable"):
        e = relprop.explain(model, x, method=method)
        assert torch.allclose(e.relevance.flatten(1).sum(1), e.score, rtol=1e-10)
    norm = make_op("pool", torch.norm, (Ref("x"),), {"dim": 1, "keepdim": True})
    v = t(3.0, 4.0).view(1, 2)
    (share,) = common.pool(norm, t(10.0).view(1, 1),
                           run_with({"x": v, "y": v.norm(dim=1, keepdim=True)}))
    assert torch.allclose(share, t(3.6, 6.4).view(1, 2))  # 10 * (9, 16) / 25


@pytest.mark.parametrize("method", ["rap", "rap-stable"])
def test_relevance_through_a_2_norm_of_a_signed_tensor_conserves(method):
    """ConvNeXt-V2's global response normalisation multiplies x by a function of its 2-norm, so
    relevance reaches the norm of a signed tensor: rap-stable's stabilised z-rule, which holds
    for linear maps only, lost 4e-7 of the score there; the norm takes the plain z-rule."""
    import torch.nn as nn

    import relprop

    class ResponseNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(16, 2)

        def forward(self, x):
            h = self.conv(x)
            return self.fc((h * torch.linalg.vector_norm(h, dim=(2, 3), keepdim=True)).flatten(1))

    torch.manual_seed(0)
    model = ResponseNorm().double().eval()
    x = torch.randn(3, 3, 4, 4, dtype=D)
    e = relprop.explain(model, x, method=method)
    assert (e.delta.abs() <= 1e-12 * e.score.abs().clamp(min=1)).all(), e.delta
