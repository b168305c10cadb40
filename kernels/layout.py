"""Column layout of the device-side tables the multi-tensor kernels read.

One launch updates any number of tensors: the host writes one row per tensor into an int64
*tensor table* (addresses as integers, sizes, offsets, Philox seed) and one row into an fp32
*tensor scalar table*; the kernels turn addresses back into typed pointers. The constants are
``tl.constexpr`` so the jitted kernels can read them; host code uses ``int(...)``.
"""
import triton.language as tl

from signopt.declaration import SCALARS, G, M, V

# int64 tensor table, one row per tensor
C_PARAM = tl.constexpr(0)          # address of the parameter (real view)
C_GRAD = tl.constexpr(1)           # address of the gradient
C_M = tl.constexpr(2)              # first moment m (codes for FP8)
C_V = tl.constexpr(3)              # second moment v (AdamW base)
C_ENV = tl.constexpr(4)            # envelope G
C_M_SCALE = tl.constexpr(5)        # FP8 block scales of m / v / G
C_V_SCALE = tl.constexpr(6)
C_ENV_SCALE = tl.constexpr(7)
C_NUMEL = tl.constexpr(8)
C_INDEX_OFFSET = tl.constexpr(9)   # full-tensor index of element 0 (Philox counter)
C_SEED = tl.constexpr(10)          # Philox key k0 | k1 << 32 (as a signed int64)
C_FIRST_BLOCK = tl.constexpr(11)   # first program of this tensor in the update pass
C_SEG_BASE = tl.constexpr(12)      # first segment of this tensor in the stage-A buffer
C_SEG_LEN = tl.constexpr(13)       # stage-A segment length (numel, row length or block)
C_SIGN = tl.constexpr(14)          # step statistics: the previous update signs (int8), or 0
C_M_TSCALE = tl.constexpr(15)      # NVFP4: the fp32 tensor scale of m / v / G (consecutive), or 0
C_V_TSCALE = tl.constexpr(16)
C_ENV_TSCALE = tl.constexpr(17)
N_COLS = tl.constexpr(18)

# step statistics: per update program, its partials (fp64): the sum of squared updates, the
# reversed signs, the NaN-propagating max of |new m|, |new v|, |new element G|
T_SQ = tl.constexpr(0)
T_FLIPS = tl.constexpr(1)
T_M = tl.constexpr(2)
T_V = tl.constexpr(3)
T_G = tl.constexpr(4)
N_TCOLS = tl.constexpr(5)

# the columns of each state slot of signopt.declaration: (its tensor, its block scales, its tensor
# scale); a slot's position here is its column in the NVFP4 tensor-scale buffers (N_TSCALES per tensor)
SLOT_COLUMNS = {M.name: (C_M, C_M_SCALE, C_M_TSCALE), V.name: (C_V, C_V_SCALE, C_V_TSCALE),
                G.name: (C_ENV, C_ENV_SCALE, C_ENV_TSCALE)}
N_TSCALES = tl.constexpr(len(SLOT_COLUMNS))
if [c[2].value for c in SLOT_COLUMNS.values()] != list(range(C_M_TSCALE.value, C_M_TSCALE.value + N_TSCALES.value)):
    raise TypeError("the kernels address slot K's tensor scale as column C_M_TSCALE + K")

# fp32 tensor scalar table, one row per tensor
F_BIAS1 = tl.constexpr(0)          # AdamW 1 - beta1**t
F_BIAS2 = tl.constexpr(1)          # AdamW 1 - beta2**t
F_NUMEL = tl.constexpr(2)          # numel rounded to fp32 (cautious rescale)
N_FCOLS = tl.constexpr(4)

# Group scalar tables (signopt.scalars.GroupScalars, computed once on the host): the scalars of
# signopt.declaration.SCALARS in their declared order, the fp32 ones in the fp32 table, followed
# by the constants of the state format the Triton kernels read there; the fp64 ones (Lion-kappa
# lp norm) in the fp64 table.
FORMAT_SCALARS = ("inv_qmax",)  # fp32(1/Qmax) of the FP8 state format (0 otherwise)
SCALARS32 = tuple(s.name for s in SCALARS if s.ctype == "float") + FORMAT_SCALARS
SCALARS64 = tuple(s.name for s in SCALARS if s.ctype == "double")
if len(SCALARS32) + len(SCALARS64) != len(SCALARS) + len(FORMAT_SCALARS):
    raise TypeError("every declared scalar is a 'float' or a 'double'")

S_LR = tl.constexpr(SCALARS32.index("lr"))
S_DECAY = tl.constexpr(SCALARS32.index("decay"))
S_L2 = tl.constexpr(SCALARS32.index("l2"))
S_BETA1 = tl.constexpr(SCALARS32.index("beta1"))
S_OMB1 = tl.constexpr(SCALARS32.index("omb1"))
S_BETA2 = tl.constexpr(SCALARS32.index("beta2"))
S_OMB2 = tl.constexpr(SCALARS32.index("omb2"))
S_EPS = tl.constexpr(SCALARS32.index("eps"))
S_HUBER_DELTA = tl.constexpr(SCALARS32.index("huber_delta"))
S_P_MINUS_1 = tl.constexpr(SCALARS32.index("p_minus_1"))
S_ENVELOPE_DECAY = tl.constexpr(SCALARS32.index("envelope_decay"))
S_INV_QMAX = tl.constexpr(SCALARS32.index("inv_qmax"))
N_SCALARS = tl.constexpr(len(SCALARS32))

D_LP_P = tl.constexpr(SCALARS64.index("lp_p"))        # p
D_LP_ROOT = tl.constexpr(SCALARS64.index("lp_root"))  # (p - 1)/p: ||c||_p^(p-1) = (sum |c|^p)^((p-1)/p)
N_SCALARS64 = tl.constexpr(len(SCALARS64))

# int64 reduction-stage table, one row per tensor
R_UNIT_BASE = tl.constexpr(0)      # first chunk (program) of this tensor
R_CHUNKS = tl.constexpr(1)         # chunks per segment
R_SEG_LEN = tl.constexpr(2)        # segment length (elements)
R_SEG_BASE = tl.constexpr(3)       # first segment of this tensor
N_RCOLS = tl.constexpr(4)
