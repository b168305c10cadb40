"""The multi-tensor kernels: one launch per pass updates every tensor of a (group, dtype) set.

Passes of one step (host side: :mod:`signopt.kernels.launch`):

1. ``reduce_chunks_kernel`` + ``reduce_finalize_kernel`` with ``WANT_STAGE_A`` — only for
   rules that reduce: Lion-kappa ``l2`` / ``row_l2`` / ``lp`` norms (fp64 sums rounded once to
   fp32, into a segment buffer) and row / block / tensor envelopes (``G <- fmax(G*decay,
   max |src|)`` written to the state ``G`` in place, unless ``found_inf``);
2. the same two kernels with ``WANT_CAUTIOUS_COUNT`` — only for cautious rules: the per-tensor
   ``numel / (kept + 1)`` rescale;
3. the same two kernels with ``WANT_STATE_ABSMAX`` — only for NVFP4 state
   (``fp4_e2m1_e4m3``): the rule evaluated without writes, the finite absmax ``T`` of each new
   state slot over the whole tensor, and its new fp32 tensor scale ``S = max(T*fp32(1/2688),
   2**-126)``, which the finalize writes into the state (unless ``found_inf``) after saving the
   old one, which the codes still need for decoding, into its output buffer. It runs after the
   other reductions (which decode the state with the tensor scale kept in it);
4. ``update_kernel`` — every element: prologue, rule, cautious mask, ``p*decay - lr*u``,
   rounding of the parameter and state writes (NVFP4: decoded with the saved old tensor scale,
   encoded with the new one), non-finite count.

Reductions run in a fixed order that does not depend on the launch: a segment (tensor, row or
block) is cut into chunks of the fixed ``RBLOCK``; each chunk program writes one partial, and
one finalize lane per segment combines its partials sequentially, in chunk order.
"""
import triton
import triton.language as tl

from .layout import (C_ENV, C_ENV_SCALE, C_FIRST_BLOCK, C_GRAD, C_INDEX_OFFSET, C_M, C_M_SCALE,
                     C_M_TSCALE, C_NUMEL, C_PARAM, C_SEED, C_SEG_BASE, C_SEG_LEN, C_SIGN, C_V, C_V_SCALE,
                     D_LP_ROOT, D_LP_P, F_BIAS1, F_BIAS2, F_NUMEL, N_COLS, N_FCOLS, N_RCOLS, N_TCOLS,
                     N_TSCALES, R_CHUNKS, R_SEG_BASE, R_SEG_LEN, R_UNIT_BASE, S_BETA1, S_BETA2, S_DECAY,
                     S_ENVELOPE_DECAY, S_EPS, S_HUBER_DELTA, S_INV_QMAX, S_L2, S_LR, S_OMB1, S_OMB2,
                     S_P_MINUS_1, T_FLIPS, T_G, T_M, T_SQ, T_V)
from .numerics import (KIND_FP4_E2M1_E4M3, PURPOSE_PARAM_ROUNDING, PURPOSE_SIGN, PURPOSE_STATE_ROUNDING,
                       fmax, nvfp4_tensor_scale, pow_f64, row_words, sign, uniform_from_word)
from .rules import (ENVELOPE_ELEMENT, ENVELOPE_TENSOR, FAMILY_LION, FAMILY_SIGN, FAMILY_SIGNUM,
                    FAMILY_STOCHASTIC, KAPPA_L2, KAPPA_LP, KAPPA_ROW_L2,
                    cautious, kappa_direction, kappa_norm_term, lion_rule, prologue,
                    signum_rule, stochastic_base, stochastic_sign)
from .state_io import finite_absmax, load_state, load_values, store_state, store_values

WANT_STAGE_A = tl.constexpr(0)        # the kappa-norm summand or the envelope source
WANT_CAUTIOUS_COUNT = tl.constexpr(1)  # 1.0 where u*g > 0
WANT_UPDATE = tl.constexpr(2)          # the direction u and the new state
WANT_STATE_ABSMAX = tl.constexpr(3)    # NVFP4: the finite absmax of each new state slot


@triton.jit
def tensor_scale_ptr(row, K: tl.constexpr):
    """The fp32 pointer to the NVFP4 tensor scale of state slot ``K`` (its position in
    ``layout.SLOT_COLUMNS``) of the tensor whose table row is ``row``."""
    return tl.load(row + C_M_TSCALE + K).to(tl.pointer_type(tl.float32))


@triton.jit
def old_tensor_scale(row, tso_ptr, t, K: tl.constexpr, S_KIND: tl.constexpr, WANT: tl.constexpr):
    """The fp32 tensor scale slot ``K``'s stored NVFP4 codes were encoded with (1.0 for any other
    state kind): in the state, until the ``WANT_STATE_ABSMAX`` finalize replaces it there and
    saves it at ``tso_ptr[t*N_TSCALES + K]``, where the update pass reads it."""
    if S_KIND != KIND_FP4_E2M1_E4M3:
        return 1.0
    elif WANT == WANT_UPDATE:
        return tl.load(tso_ptr + t * N_TSCALES + K)
    else:
        return tl.load(tensor_scale_ptr(row, K))


@triton.jit
def new_tensor_scale(row, K: tl.constexpr, S_KIND: tl.constexpr):
    """The fp32 tensor scale slot ``K``'s new NVFP4 codes are encoded with: the state's, which the
    ``WANT_STATE_ABSMAX`` finalize has set (1.0 for any other state kind)."""
    if S_KIND != KIND_FP4_E2M1_E4M3:
        return 1.0
    else:
        return tl.load(tensor_scale_ptr(row, K))


@triton.jit
def element_rule(row, frow, sc_ptr, sc64_ptr, inv_scale_ptr, sega_ptr, segb_ptr, tso_ptr, t, offs, row0, mask,
                 FAMILY: tl.constexpr, KAPPA: tl.constexpr, BASE: tl.constexpr,
                 ENVELOPE: tl.constexpr, ENV_FROM_GRAD: tl.constexpr, CAUTIOUS: tl.constexpr,
                 MAXIMIZE: tl.constexpr, HAS_L2: tl.constexpr, HAS_INV_SCALE: tl.constexpr,
                 P_KIND: tl.constexpr, G_KIND: tl.constexpr, S_KIND: tl.constexpr,
                 HAS_M: tl.constexpr, HAS_V: tl.constexpr, ELEMENT_G: tl.constexpr,
                 SBLK: tl.constexpr, COLS: tl.constexpr, WANT: tl.constexpr):
    """Everything a pass needs about the elements ``offs`` of tensor ``t``: a tile of
    ``COLS`` columns whose rows are runs of consecutive elements, row ``r`` starting at the
    local offset ``row0[r]`` (``[ROWS, 1]``).

    ``HAS_M``, ``HAS_V``, ``ELEMENT_G``: which per-element state slots the rule's kernel kind
    keeps (``signopt.declaration``; ``ELEMENT_G``: an element envelope), loaded here in the
    state format (NVFP4 with the tensor scales of :func:`old_tensor_scale`).

    Returns ``(p, g, bad, q, u, m_new, v_new, env_new)``: fp32 parameter, prologue-processed
    gradient, non-finite mask, the reduction quantity ``q`` (``WANT_STAGE_A``,
    ``WANT_CAUTIOUS_COUNT``), the direction ``u`` (after the cautious mask; not computed for
    ``WANT_STATE_ABSMAX``) and the new fp32 state. The stochastic sign's
    words are drawn here (only the passes that need ``u`` of the stochastic family); the
    rounding words by :func:`update_kernel`.
    """
    p = load_values(tl.load(row + C_PARAM), offs, mask, P_KIND)
    graw = load_values(tl.load(row + C_GRAD), offs, mask, G_KIND)
    inv_scale = 1.0
    if HAS_INV_SCALE:
        inv_scale = tl.load(inv_scale_ptr)
    g, bad = prologue(graw, p, inv_scale, tl.load(sc_ptr + S_L2), MAXIMIZE, HAS_INV_SCALE, HAS_L2)
    zero = tl.zeros_like(g)
    block = offs // SBLK
    m = zero
    v = zero
    env_el = zero
    if HAS_M:
        m = load_state(tl.load(row + C_M), tl.load(row + C_M_SCALE), offs, mask, block,
                       old_tensor_scale(row, tso_ptr, t, 0, S_KIND, WANT), S_KIND)
    if HAS_V:
        v = load_state(tl.load(row + C_V), tl.load(row + C_V_SCALE), offs, mask, block,
                       old_tensor_scale(row, tso_ptr, t, 1, S_KIND, WANT), S_KIND)
    if ELEMENT_G:
        env_el = load_state(tl.load(row + C_ENV), tl.load(row + C_ENV_SCALE), offs, mask, block,
                            old_tensor_scale(row, tso_ptr, t, 2, S_KIND, WANT), S_KIND)
    beta1 = tl.load(sc_ptr + S_BETA1)
    omb1 = tl.load(sc_ptr + S_OMB1)
    beta2 = tl.load(sc_ptr + S_BETA2)
    omb2 = tl.load(sc_ptr + S_OMB2)
    m_new = m
    v_new = v
    env_new = env_el
    # the signed quantity x of each family
    if FAMILY == FAMILY_SIGN:
        x = g
    elif FAMILY == FAMILY_SIGNUM:
        m_new = signum_rule(m, g, bad, beta1, omb1)
        x = m_new
    elif FAMILY == FAMILY_LION:
        x, m_new = lion_rule(m, g, bad, beta1, omb1, beta2, omb2)
    else:
        x, m_new, v_new = stochastic_base(m, v, g, bad, beta1, omb1, beta2, omb2,
                                          tl.load(sc_ptr + S_EPS), tl.load(frow + F_BIAS1),
                                          tl.load(frow + F_BIAS2), BASE)
    if ELEMENT_G:  # an element envelope: G <- fmax(G*decay, |src|), kept at bad elements
        if ENV_FROM_GRAD:
            src = tl.abs(g)
        else:
            src = tl.abs(x)
        env_new = tl.where(bad, env_el, fmax(env_el * tl.load(sc_ptr + S_ENVELOPE_DECAY), src))
    q = zero.to(tl.float64)
    u = zero
    if WANT == WANT_STAGE_A:
        if FAMILY == FAMILY_LION:
            q = kappa_norm_term(x, tl.load(sc64_ptr + D_LP_P), KAPPA)
        else:
            if ENV_FROM_GRAD:
                q = tl.abs(g).to(tl.float64)
            else:
                q = tl.abs(x).to(tl.float64)
    elif WANT != WANT_STATE_ABSMAX:
        if FAMILY == FAMILY_SIGN or FAMILY == FAMILY_SIGNUM:
            u = sign(x)
        elif FAMILY == FAMILY_LION:
            norm = zero
            if KAPPA == KAPPA_L2 or KAPPA == KAPPA_LP:
                norm = zero + tl.load(sega_ptr + tl.load(row + C_SEG_BASE))
            elif KAPPA == KAPPA_ROW_L2:
                seg = tl.load(row + C_SEG_BASE) + offs // tl.load(row + C_SEG_LEN)
                norm = tl.load(sega_ptr + seg, mask=mask, other=0.0)
            u = kappa_direction(x, norm, tl.load(sc_ptr + S_HUBER_DELTA),
                                tl.load(sc_ptr + S_P_MINUS_1), KAPPA)
        else:
            env_ptr = tl.load(row + C_ENV).to(tl.pointer_type(tl.float32))
            if ENVELOPE == ENVELOPE_ELEMENT:
                env = env_new
            elif ENVELOPE == ENVELOPE_TENSOR:
                env = zero + tl.load(env_ptr)
            else:
                env = tl.load(env_ptr + offs // tl.load(row + C_SEG_LEN), mask=mask, other=0.0)
            sign_word = row_words(tl.load(row + C_SEED), tl.load(row + C_INDEX_OFFSET) + row0,
                                  PURPOSE_SIGN, COLS)
            u = stochastic_sign(x, env, uniform_from_word(sign_word))
        if WANT == WANT_CAUTIOUS_COUNT:
            q = (u * g > 0.0).to(tl.float64)
        elif CAUTIOUS:
            u = cautious(u, g, tl.load(segb_ptr + t))
    return p, g, bad, q, u, m_new, v_new, env_new


@triton.jit
def absmax_nan(x, mask):
    """``max |x|`` over ``mask`` (0 when empty), NaN when any is NaN (``torch.amax``), in fp64."""
    a = tl.where(mask, tl.abs(x), 0.0)
    nan = tl.sum(((a != a) & mask).to(tl.int32))
    return tl.where(nan > 0, float("nan"), tl.max(tl.where(a != a, 0.0, a))).to(tl.float64)


@triton.jit
def update_kernel(tab_ptr, ftab_ptr, blk_ptr, sc_ptr, sc64_ptr, inv_scale_ptr, found_inf_ptr,
                  sega_ptr, segb_ptr, tso_ptr, count_ptr, stats_ptr,
                  FAMILY: tl.constexpr, KAPPA: tl.constexpr, BASE: tl.constexpr,
                  ENVELOPE: tl.constexpr, ENV_FROM_GRAD: tl.constexpr, CAUTIOUS: tl.constexpr,
                  MAXIMIZE: tl.constexpr, HAS_L2: tl.constexpr, HAS_INV_SCALE: tl.constexpr,
                  HAS_FOUND_INF: tl.constexpr, P_KIND: tl.constexpr, G_KIND: tl.constexpr,
                  S_KIND: tl.constexpr, HAS_M: tl.constexpr, HAS_V: tl.constexpr,
                  ELEMENT_G: tl.constexpr, STATE_SR: tl.constexpr, PARAM_SR: tl.constexpr,
                  STATS: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr, SB: tl.constexpr):
    """Pass 3: the update of ``ROWS*SB`` consecutive elements of one tensor per program.

    The tile is ``[ROWS, COLS]`` with row stride ``SB``: for FP8 state ``SB`` is the FP8 block
    (``COLS`` its next power of two), so each row is one block and its absmax is a row max;
    otherwise ``ROWS = 1`` and ``SB = COLS``. ``blk_ptr[pid]`` names the tensor. NVFP4 state is
    decoded with the old tensor scales saved at ``tso_ptr`` and encoded with the new ones in the
    state (:data:`WANT_STATE_ABSMAX`).
    ``STATS``: step statistics — the previous signs (``C_SIGN``) compared and replaced, and the
    program's partials (``layout.T_*``) into row ``pid`` of ``stats_ptr``.
    """
    pid = tl.program_id(0)
    t = tl.load(blk_ptr + pid).to(tl.int64)
    row = tab_ptr + t * N_COLS
    frow = ftab_ptr + t * N_FCOLS
    numel = tl.load(row + C_NUMEL)
    start = (pid - tl.load(row + C_FIRST_BLOCK)) * (ROWS * SB)
    r = tl.arange(0, ROWS).to(tl.int64)
    c = tl.arange(0, COLS)
    row0 = start + r[:, None] * SB
    offs = row0 + c[None, :]
    mask = (c[None, :] < SB) & (offs < numel)
    p, g, bad, q, u, m_new, v_new, env_new = element_rule(
        row, frow, sc_ptr, sc64_ptr, inv_scale_ptr, sega_ptr, segb_ptr, tso_ptr, t, offs, row0, mask,
        FAMILY, KAPPA, BASE, ENVELOPE, ENV_FROM_GRAD, CAUTIOUS, MAXIMIZE, HAS_L2, HAS_INV_SCALE,
        P_KIND, G_KIND, S_KIND, HAS_M, HAS_V, ELEMENT_G, SB, COLS, WANT_UPDATE)
    param_word = tl.zeros_like(offs).to(tl.uint32)
    state_word = param_word
    if PARAM_SR:
        param_word = row_words(tl.load(row + C_SEED), tl.load(row + C_INDEX_OFFSET) + row0,
                               PURPOSE_PARAM_ROUNDING, COLS)
    if STATE_SR and (HAS_M or HAS_V or ELEMENT_G):
        state_word = row_words(tl.load(row + C_SEED), tl.load(row + C_INDEX_OFFSET) + row0,
                               PURPOSE_STATE_ROUNDING, COLS)
    q_new = p * tl.load(sc_ptr + S_DECAY) - tl.load(sc_ptr + S_LR) * u
    p_new = tl.where(bad, p, q_new)
    row_start = start + r * SB
    row_mask = row_start < numel
    if HAS_FOUND_INF:
        keep_going = tl.where(tl.load(found_inf_ptr) > 0.0, 0, 1) != 0  # not (found_inf > 0)
        row_mask = row_mask & keep_going
        store_mask = mask & keep_going
    else:
        store_mask = mask
    block_row = row_start // SB
    inv_qmax = tl.load(sc_ptr + S_INV_QMAX)
    store_values(tl.load(row + C_PARAM), offs, p_new, store_mask, param_word, P_KIND, PARAM_SR)
    if HAS_M:
        store_state(tl.load(row + C_M), tl.load(row + C_M_SCALE), offs, m_new, store_mask,
                    block_row, row_mask, state_word, inv_qmax, new_tensor_scale(row, 0, S_KIND),
                    S_KIND, STATE_SR)
    if HAS_V:
        store_state(tl.load(row + C_V), tl.load(row + C_V_SCALE), offs, v_new, store_mask,
                    block_row, row_mask, state_word, inv_qmax, new_tensor_scale(row, 1, S_KIND),
                    S_KIND, STATE_SR)
    if ELEMENT_G:
        store_state(tl.load(row + C_ENV), tl.load(row + C_ENV_SCALE), offs, env_new, store_mask,
                    block_row, row_mask, state_word, inv_qmax, new_tensor_scale(row, 2, S_KIND),
                    S_KIND, STATE_SR)
    n_bad = tl.sum((bad & mask).to(tl.int32))
    tl.atomic_add(count_ptr, n_bad.to(tl.int64))
    if STATS:
        ok = (tl.where(bad, 0, 1) != 0) & mask  # finite gradient, in the tensor
        d = tl.where(ok, q_new - p, 0.0).to(tl.float64)
        s = tl.where(u > 0.0, 1, tl.where(u < 0.0, -1, 0))
        sign_ptr = tl.load(row + C_SIGN).to(tl.pointer_type(tl.int8)) + offs
        prev = tl.load(sign_ptr, mask=mask, other=0).to(tl.int32)
        flips = tl.sum(((s * prev < 0) & ok).to(tl.int32))
        tl.store(sign_ptr, s.to(tl.int8), mask=store_mask & ok)
        out = stats_ptr + pid.to(tl.int64) * N_TCOLS
        tl.store(out + T_SQ, tl.sum(d * d))
        tl.store(out + T_FLIPS, flips.to(tl.float64))
        if HAS_M:
            tl.store(out + T_M, absmax_nan(m_new, mask))
        if HAS_V:
            tl.store(out + T_V, absmax_nan(v_new, mask))
        if ELEMENT_G:
            tl.store(out + T_G, absmax_nan(env_new, mask))


@triton.jit
def reduce_chunks_kernel(tab_ptr, ftab_ptr, unit_ptr, rtab_ptr, sc_ptr, sc64_ptr, inv_scale_ptr,
                         sega_ptr, partial_ptr, n_units,
                         FAMILY: tl.constexpr, KAPPA: tl.constexpr, BASE: tl.constexpr,
                         ENVELOPE: tl.constexpr, ENV_FROM_GRAD: tl.constexpr,
                         MAXIMIZE: tl.constexpr, HAS_L2: tl.constexpr,
                         HAS_INV_SCALE: tl.constexpr, P_KIND: tl.constexpr,
                         G_KIND: tl.constexpr, S_KIND: tl.constexpr, HAS_M: tl.constexpr,
                         HAS_V: tl.constexpr, ELEMENT_G: tl.constexpr,
                         SBLK: tl.constexpr, WANT: tl.constexpr, UNITS: tl.constexpr,
                         RBLOCK: tl.constexpr):
    """Passes 1a/2a/3a: one partial per chunk (``RBLOCK`` elements of one segment): an fp64 sum,
    or an fp64 max for envelopes, written to ``partial_ptr[unit]``; for ``WANT_STATE_ABSMAX``
    the finite absmax of each new state slot ``K``, written to ``partial_ptr[unit*N_TSCALES + K]``.
    A program takes ``UNITS`` consecutive chunks as the rows of its tile, so short segments
    (blocks, short rows) share a program; every row still reduces its own chunk."""
    unit = tl.program_id(0) * UNITS + tl.arange(0, UNITS)[:, None].to(tl.int64)
    live = unit < n_units
    t = tl.load(unit_ptr + unit, mask=live, other=0).to(tl.int64)
    row = tab_ptr + t * N_COLS
    rrow = rtab_ptr + t * N_RCOLS
    local = unit - tl.load(rrow + R_UNIT_BASE)
    chunks = tl.load(rrow + R_CHUNKS)
    seg_len = tl.load(rrow + R_SEG_LEN)
    seg = local // chunks
    seg_start = seg * seg_len
    row0 = seg_start + (local - seg * chunks) * RBLOCK
    offs = row0 + tl.arange(0, RBLOCK)[None, :].to(tl.int64)
    end = tl.minimum(seg_start + seg_len, tl.load(row + C_NUMEL))
    mask = (offs < end) & live
    p, g, bad, q, u, m_new, v_new, env_new = element_rule(
        row, ftab_ptr + t * N_FCOLS, sc_ptr, sc64_ptr, inv_scale_ptr, sega_ptr, sega_ptr, sega_ptr, t,
        offs, row0, mask, FAMILY, KAPPA, BASE, ENVELOPE, ENV_FROM_GRAD, False, MAXIMIZE, HAS_L2,
        HAS_INV_SCALE, P_KIND, G_KIND, S_KIND, HAS_M, HAS_V, ELEMENT_G, SBLK, RBLOCK, WANT)
    unit1 = tl.program_id(0) * UNITS + tl.arange(0, UNITS).to(tl.int64)
    live1 = unit1 < n_units
    if WANT == WANT_STATE_ABSMAX:
        out = partial_ptr + unit1 * N_TSCALES
        if HAS_M:
            tl.store(out + 0, finite_absmax(m_new, mask).to(tl.float64), mask=live1)
        if HAS_V:
            tl.store(out + 1, finite_absmax(v_new, mask).to(tl.float64), mask=live1)
        if ELEMENT_G:
            tl.store(out + 2, finite_absmax(env_new, mask).to(tl.float64), mask=live1)
    else:
        q = tl.where(mask, q, 0.0)
        if WANT == WANT_STAGE_A and FAMILY == FAMILY_STOCHASTIC:
            partial = tl.max(q, axis=1)
        else:
            partial = tl.sum(q, axis=1)
        tl.store(partial_ptr + unit1, partial, mask=live1)


@triton.jit
def reduce_finalize_kernel(tab_ptr, ftab_ptr, seg_ptr, rtab_ptr, sc_ptr, sc64_ptr, found_inf_ptr,
                           partial_ptr, out_ptr, n_segs,
                           FAMILY: tl.constexpr, KAPPA: tl.constexpr,
                           HAS_FOUND_INF: tl.constexpr, WANT: tl.constexpr,
                           FSEGS: tl.constexpr, NP: tl.constexpr):
    """Passes 1b/2b/3b: each of ``FSEGS`` lanes finalizes column ``k`` of one segment ``s``
    (lane ``s*NP + k``; ``NP`` partials per chunk: ``N_TSCALES`` for ``WANT_STATE_ABSMAX``, else 1),
    adding (or max-ing) its chunk partials one at a time in chunk order, then

    * kappa norms: ``out[s] = fp32(sqrt(sum))`` (l2, row_l2) or ``fp32(sum**((p-1)/p))`` (lp);
    * envelopes: ``G[s] <- fmax(G[s]*envelope_decay, fp32(max))`` in the state, unless found_inf;
    * cautious: ``out[s] = numel / fp32(kept + 1)`` (correctly rounded);
    * NVFP4 state absmax (segment = tensor, ``k`` = slot): ``out[s*NP + k]`` <- the slot's old
      tensor scale, then ``S <- max(fp32(T)*fp32(1/2688), 2**-126)`` in the state, unless
      found_inf (lanes of slots the tensor does not keep do nothing).
    """
    lane = tl.program_id(0) * FSEGS + tl.arange(0, FSEGS).to(tl.int64)
    s = lane // NP
    col = lane % NP
    live = s < n_segs
    t = tl.load(seg_ptr + s, mask=live, other=0).to(tl.int64)
    row = tab_ptr + t * N_COLS
    rrow = rtab_ptr + t * N_RCOLS
    local = s - tl.load(rrow + R_SEG_BASE)
    chunks = tl.load(rrow + R_CHUNKS)
    first = tl.load(rrow + R_UNIT_BASE) + local * chunks
    acc = tl.zeros([FSEGS], tl.float64)
    for k in range(0, tl.max(tl.where(live, chunks, 0))):
        vals = tl.load(partial_ptr + (first + k) * NP + col, mask=live & (k < chunks), other=0.0)
        if (WANT == WANT_STAGE_A and FAMILY == FAMILY_STOCHASTIC) or WANT == WANT_STATE_ABSMAX:
            acc = tl.maximum(acc, vals)
        else:
            acc = acc + vals
    if WANT == WANT_STATE_ABSMAX:
        ts_addr = tl.load(row + C_M_TSCALE + col, mask=live, other=0)
        keeps = live & (ts_addr != 0)
        ts_ptr = ts_addr.to(tl.pointer_type(tl.float32))
        tl.store(out_ptr + lane, tl.load(ts_ptr, mask=keeps, other=0.0), mask=keeps)
        store = keeps
        if HAS_FOUND_INF:
            store = keeps & (tl.where(tl.load(found_inf_ptr) > 0.0, 0, 1) != 0)
        tl.store(ts_ptr, nvfp4_tensor_scale(acc.to(tl.float32)), mask=store)
    elif WANT == WANT_STAGE_A:
        if FAMILY == FAMILY_LION:
            if KAPPA == KAPPA_LP:
                norm = pow_f64(acc, tl.load(sc64_ptr + D_LP_ROOT))
            else:
                norm = tl.sqrt(acc)
            tl.store(out_ptr + s, norm.to(tl.float32), mask=live)
        else:
            env_ptr = tl.load(row + C_ENV).to(tl.pointer_type(tl.float32)) + local
            g_old = tl.load(env_ptr, mask=live, other=0.0)
            g_new = fmax(g_old * tl.load(sc_ptr + S_ENVELOPE_DECAY), acc.to(tl.float32))
            store = live
            if HAS_FOUND_INF:
                store = live & (tl.where(tl.load(found_inf_ptr) > 0.0, 0, 1) != 0)
            tl.store(env_ptr, g_new, mask=store)
    else:
        kept = (acc + 1.0).to(tl.float32)
        numel = tl.load(ftab_ptr + t * N_FCOLS + F_NUMEL)
        tl.store(out_ptr + s, tl.math.div_rn(numel, kept), mask=live)
