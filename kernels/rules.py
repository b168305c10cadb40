"""The update rules as ``@triton.jit`` functions: one per family, shared by every kernel.

Each mirrors :mod:`signopt.reference` operation for operation (see its docstring for the
math); kernels differ only in what they load before and store after calling these.

* :func:`prologue` — ``g*inv_scale``, ``-g`` (maximize), non-finite mask, ``g + l2*p``;
* :func:`signum_rule`, :func:`lion_rule` — momentum updates and the signed quantity;
* :func:`kappa_direction` — ``grad kappa(c)`` of the Lion-kappa registry;
* :func:`stochastic_base` — the base direction ``d`` (sgd / momentum / adamw / lion);
* :func:`stochastic_sign` — ``S_G(d)``; :func:`cautious` — the cautious mask and rescale.
"""
import triton
import triton.language as tl

from signopt.declaration import BASES, ENVELOPES, FAMILIES, KAPPAS

from .numerics import ema, is_finite, pow_f64, safe_div, sign

# Rule codes: the ids of signopt.declaration (constexpr values the host chooses from the rule)
FAMILY_SIGN = tl.constexpr(FAMILIES["sign"])
FAMILY_SIGNUM = tl.constexpr(FAMILIES["signum"])
FAMILY_LION = tl.constexpr(FAMILIES["lion"])
FAMILY_STOCHASTIC = tl.constexpr(FAMILIES["stochastic"])

KAPPA_L1 = tl.constexpr(KAPPAS["l1"])
KAPPA_L2SQ = tl.constexpr(KAPPAS["l2sq"])
KAPPA_HUBER = tl.constexpr(KAPPAS["huber"])
KAPPA_L2 = tl.constexpr(KAPPAS["l2"])
KAPPA_ROW_L2 = tl.constexpr(KAPPAS["row_l2"])
KAPPA_LP = tl.constexpr(KAPPAS["lp"])

BASE_SGD = tl.constexpr(BASES["sgd"])
BASE_MOMENTUM = tl.constexpr(BASES["momentum"])
BASE_ADAMW = tl.constexpr(BASES["adamw"])
BASE_LION = tl.constexpr(BASES["lion"])

ENVELOPE_ELEMENT = tl.constexpr(ENVELOPES["element"])
ENVELOPE_ROW = tl.constexpr(ENVELOPES["row"])
ENVELOPE_BLOCK = tl.constexpr(ENVELOPES["block"])
ENVELOPE_TENSOR = tl.constexpr(ENVELOPES["tensor"])


@triton.jit
def prologue(g, p, inv_scale, l2, MAXIMIZE: tl.constexpr, HAS_INV_SCALE: tl.constexpr,
             HAS_L2: tl.constexpr):
    """``g <- g*inv_scale; g <- -g; bad = !isfinite(g); g <- 0 at bad; g <- g + l2*p``."""
    if HAS_INV_SCALE:
        g = g * inv_scale
    if MAXIMIZE:
        g = -g
    bad = not_finite(g)
    g = tl.where(bad, 0.0, g)
    if HAS_L2:
        g = g + l2 * p
    return g, bad


@triton.jit
def not_finite(x):
    return ~is_finite(x)


@triton.jit
def signum_rule(m, g, bad, beta, omb):
    """Signum: ``m <- m*beta + g*(1-beta)`` (kept at bad elements); the signed quantity is m."""
    return tl.where(bad, m, ema(m, g, beta, omb))


@triton.jit
def lion_rule(m, g, bad, beta1, omb1, beta2, omb2):
    """Lion: ``c = m*beta1 + g*(1-beta1)`` (0 at bad), ``m <- m*beta2 + g*(1-beta2)``."""
    c = tl.where(bad, 0.0, ema(m, g, beta1, omb1))
    m_new = tl.where(bad, m, ema(m, g, beta2, omb2))
    return c, m_new


@triton.jit
def kappa_direction(c, norm, delta, p_minus_1, KAPPA: tl.constexpr):
    """``grad kappa(c)``; ``norm`` is the fp32 tensor/row norm (``||c||_p^(p-1)`` for lp)."""
    if KAPPA == KAPPA_L1:
        return sign(c)
    elif KAPPA == KAPPA_L2SQ:
        return c
    elif KAPPA == KAPPA_HUBER:
        return tl.minimum(tl.maximum(tl.math.div_rn(c, delta), -1.0), 1.0)
    elif KAPPA == KAPPA_LP:
        mag = pow_f64(tl.abs(c).to(tl.float64), p_minus_1.to(tl.float64)).to(tl.float32)
        return safe_div(sign(c) * mag, norm)
    else:
        return safe_div(c, norm)


@triton.jit
def kappa_norm_term(c, p64, KAPPA: tl.constexpr):
    """The fp64 summand of the kappa norm: ``c**2`` (l2, row_l2) or ``|c|**p`` (lp)."""
    c64 = c.to(tl.float64)
    if KAPPA == KAPPA_LP:
        return pow_f64(tl.abs(c64), p64)
    else:
        return c64 * c64


@triton.jit
def stochastic_base(m, v, g, bad, beta1, omb1, beta2, omb2, eps, bias1, bias2,
                    BASE: tl.constexpr):
    """Base direction ``d`` and new moments ``(m, v)`` of the sign-conversion rule."""
    if BASE == BASE_SGD:
        return g, m, v
    elif BASE == BASE_MOMENTUM:
        m_new = tl.where(bad, m, ema(m, g, beta1, omb1))
        return m_new, m_new, v
    elif BASE == BASE_LION:
        c, m_new = lion_rule(m, g, bad, beta1, omb1, beta2, omb2)
        return c, m_new, v
    else:
        m_new = tl.where(bad, m, ema(m, g, beta1, omb1))
        v_new = tl.where(bad, v, ema(v, g * g, beta2, omb2))
        den = tl.math.sqrt_rn(tl.math.div_rn(v_new, bias2)) + eps
        d = tl.math.div_rn(tl.math.div_rn(m_new, bias1), den)
        return tl.where(bad, 0.0, d), m_new, v_new


@triton.jit
def stochastic_sign(d, env, uniform):
    """``S_G(d)``: +1 where ``U < (1 + d/G)/2``, else -1; 0 where ``d == G == 0``."""
    threshold = (1.0 + tl.math.div_rn(d, env)) * 0.5
    s = tl.where(uniform < threshold, 1.0, -1.0)
    return tl.where((d == 0.0) & (env == 0.0), 0.0, s)


@triton.jit
def cautious(u, g, scale):
    """Keep ``u`` where ``u*g > 0`` (rescaled by ``numel/(kept+1)``, given as ``scale``)."""
    return tl.where(u * g > 0.0, u * scale, 0.0)
