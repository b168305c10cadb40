"""Column layout of the device-side tables the multi-tensor kernels read.

One launch updates any number of tensors: the host writes one row per tensor into an int64
*tensor table* (addresses as integers, sizes, offsets, Philox seed) and one row into an fp32
*tensor scalar table*; the kernels turn addresses back into typed pointers. The constants are
``tl.constexpr`` so the jitted kernels can read them; host code uses ``int(...)``.
"""
import triton.language as tl

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
N_COLS = tl.constexpr(14)

# fp32 tensor scalar table, one row per tensor
F_BIAS1 = tl.constexpr(0)          # AdamW 1 - beta1**t
F_BIAS2 = tl.constexpr(1)          # AdamW 1 - beta2**t
F_NUMEL = tl.constexpr(2)          # numel rounded to fp32 (cautious rescale)
N_FCOLS = tl.constexpr(4)

# fp32 group scalar table (signopt.scalars.GroupScalars, computed once on the host)
S_LR = tl.constexpr(0)
S_DECAY = tl.constexpr(1)
S_L2 = tl.constexpr(2)
S_BETA1 = tl.constexpr(3)
S_OMB1 = tl.constexpr(4)
S_BETA2 = tl.constexpr(5)
S_OMB2 = tl.constexpr(6)
S_EPS = tl.constexpr(7)
S_HUBER_DELTA = tl.constexpr(8)
S_P_MINUS_1 = tl.constexpr(9)      # p - 1 (exact in fp32 for an fp32 p > 1)
S_ENV_DECAY = tl.constexpr(10)
S_INV_QMAX = tl.constexpr(11)      # fp32(1/Qmax) of the FP8 state format
N_SCALARS = tl.constexpr(12)

# fp64 group scalar table (Lion-kappa lp norm)
D_P = tl.constexpr(0)              # p
D_NORM_EXP = tl.constexpr(1)       # (p - 1)/p, so ||c||_p^(p-1) = (sum |c|^p)^((p-1)/p)
N_SCALARS64 = tl.constexpr(2)

# int64 reduction-stage table, one row per tensor
R_UNIT_BASE = tl.constexpr(0)      # first chunk (program) of this tensor
R_CHUNKS = tl.constexpr(1)         # chunks per segment
R_SEG_LEN = tl.constexpr(2)        # segment length (elements)
R_SEG_BASE = tl.constexpr(3)       # first segment of this tensor
N_RCOLS = tl.constexpr(4)
