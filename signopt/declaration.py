"""Every update rule and storage format, declared once.

This module is the single place that says, for each rule, what a fused kernel reads and keeps,
and, for each storage format, how a value is stored. Everything else derives from it:

* :mod:`signopt.rule` takes its choices (families, kappas, bases, envelopes, formats) from here;
* :mod:`signopt.state_layout` allocates and pairs state from :func:`slots` and :data:`FORMATS`;
* the C++/CUDA kernels include a header generated from :func:`cpp_header` at build time (its
  text is part of the build's cache key), which holds the enums, the per-kind tables, the
  ``Scalars`` struct and the ``signopt::step`` schema;
* the Triton kernels take their constexpr ids from :data:`FAMILIES`, :data:`KAPPAS`,
  :data:`BASES`, :data:`ENVELOPES` and :data:`FORMATS`, and their scalar table order from
  :data:`SCALARS`.

The math of each rule is stated by :mod:`signopt.reference`; this module says only which
pieces of data each rule touches. Ids are part of the kernel ABI, not of checkpoints (state
dicts record names).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# ------------------------------------------------------------------------------ choices
FAMILIES = {"sign": 0, "signum": 1, "lion": 2, "stochastic": 3}
"""Rule families (``SignOptimizer.family``) and their ids."""

KAPPAS = {"l1": 0, "l2sq": 1, "huber": 2, "l2": 3, "row_l2": 4, "lp": 5}
"""Lion-kappa choices with a fused kernel (a callable kappa runs on the torch backend only)."""

BASES = {"sgd": 0, "momentum": 1, "adamw": 2, "lion": 3}
"""Base directions of the stochastic-sign rule (SignConversion/StoSignSGD)."""

ENVELOPES = {"element": 0, "row": 1, "block": 2, "tensor": 3}
"""Envelope granularity of the stochastic-sign rule: one cell per element, row, block, tensor."""

ENVELOPE_SOURCES = ("direction", "grad")
WD_MODES = ("decoupled", "independent", "l2")
ROUNDINGS = ("nearest", "stochastic")

KAPPA_SEGMENT = {"l1": None, "l2sq": None, "huber": None, "l2": "tensor", "row_l2": "row", "lp": "tensor"}
"""The segment whose norm each kappa reduces (``None``: elementwise)."""

RANDOM_PURPOSES = {"sign": 0, "state_rounding": 1, "param_rounding": 2}
"""The purposes of random bits, by the id each puts in the third Philox counter word (random
bits v2: see :mod:`signopt.philox`)."""


# ------------------------------------------------------------------------------ formats
@dataclass(frozen=True)
class Format:
    """A storage format: of parameters (``param``) and/or optimizer state (``state``).

    ``block_scaled`` formats store codes in ``dtype`` plus one scale per ``state_block``
    consecutive elements of the flattened tensor (kept under :data:`SCALE_KEY` of the slot), of
    scale type ``scale`` (:data:`SCALE_TYPES`): ``"fp32"`` (``absmax/Qmax``) or ``"e8m0"`` (OCP
    Microscaling: a power of two ``2**(floor(log2(absmax)) - emax)``, stored as its biased
    exponent byte). ``default_block`` is ``state_block``'s value when the option is left at None.
    """

    name: str
    id: int
    dtype: torch.dtype
    bits: int
    mantissa_bits: int
    emin: int  # minimum normal exponent
    max_finite: float  # largest finite value (Qmax of a block-scaled format)
    param: bool
    state: bool
    codec: str | None  # its C++ codec type (csrc/casts.h), named in the generated dispatch lists
    # (None: no C++ kernel -- the cpp backend refuses it)
    block_scaled: bool = False
    scale: str = "fp32"
    default_block: int = 256
    packed: bool = False  # two 4-bit codes a byte: codes stored flat, ceil(numel/2) uint8 bytes
    scale_options: tuple[str, ...] = ()  # the values the ``state_scale`` option may take (None always)
    option_of: tuple[str, str] | None = None  # (state_dtype, state_scale) that select this format
    # (an internal format: not a state_dtype value of its own)

    @property
    def tensor_scale(self) -> bool:
        """Whether the format keeps one fp32 scale per tensor besides its block scales (NVFP4's
        two-level scaling: E4M3 block scales relative to an fp32 tensor scale)."""
        return self.scale == "e4m3"

    @property
    def emax(self) -> int:
        """The exponent of the largest normal binade (``floor(log2(max_finite))``): 8 for E4M3,
        15 for E5M2 -- the ``emax_elem`` of the MX scale rule."""
        return math.frexp(self.max_finite)[1] - 1

    @property
    def pow2_blocks(self) -> bool:
        """Whether ``state_block`` must be a power of two (at most :data:`MAX_POW2_BLOCK`)."""
        return self.scale != "fp32"

    @property
    def min_block(self) -> int:
        """The smallest ``state_block``: 2 for packed codes (a block never splits a byte)."""
        return 2 if self.packed else 1


FORMATS = {f.name: f for f in (
    Format("fp32", 0, torch.float32, 32, 23, -126, 3.4028234663852886e38, param=True, state=True,
           codec="FmtF32"),
    Format("bf16", 1, torch.bfloat16, 16, 7, -126, 3.3895313892515355e38, param=True, state=True,
           codec="FmtBF16"),
    Format("fp16", 2, torch.float16, 16, 10, -14, 65504.0, param=True, state=False, codec="FmtF16"),
    Format("fp8_e4m3", 3, torch.float8_e4m3fn, 8, 3, -6, 448.0, param=False, state=True, codec="FmtE4M3",
           block_scaled=True),
    Format("fp8_e5m2", 4, torch.float8_e5m2, 8, 2, -14, 57344.0, param=False, state=True, codec="FmtE5M2",
           block_scaled=True),
    Format("mxfp8_e4m3", 5, torch.float8_e4m3fn, 8, 3, -6, 448.0, param=False, state=True, codec="FmtMXE4M3",
           block_scaled=True, scale="e8m0", default_block=32),
    Format("mxfp8_e5m2", 6, torch.float8_e5m2, 8, 2, -14, 57344.0, param=False, state=True, codec="FmtMXE5M2",
           block_scaled=True, scale="e8m0", default_block=32),
    Format("fp4_e2m1", 7, torch.uint8, 4, 1, 0, 6.0, param=False, state=True, codec="FmtE2M1",
           block_scaled=True, scale="e8m0", default_block=32, packed=True, scale_options=("e8m0", "e4m3")),
    Format("fp4_e2m1_e4m3", 8, torch.uint8, 4, 1, 0, 6.0, param=False, state=True, codec="FmtNVFP4",
           block_scaled=True, scale="e4m3", default_block=16, packed=True,
           option_of=("fp4_e2m1", "e4m3")),
)}
STATE_FORMATS = tuple(n for n, f in FORMATS.items() if f.state)
STATE_DTYPES = tuple(n for n in STATE_FORMATS if FORMATS[n].option_of is None)
"""The ``state_dtype`` values (an internal format is chosen by ``state_dtype`` and ``state_scale``)."""
PARAM_FORMATS = {f.dtype: f for f in FORMATS.values() if f.param}
SCALE_DTYPE = torch.float32
SCALE_TYPES = {"fp32": torch.float32, "e8m0": torch.uint8, "e4m3": torch.float8_e4m3fn}
"""Block-scale types and the dtype their scales are stored in: fp32 values, or E8M0 (OCP MX v1.0:
the biased exponent ``e + 127`` of the power of two ``2**e``, ``e`` in [-127, 127]; 0xFF, NaN,
is never written), or E4M3 values relative to a per-tensor fp32 scale (NVFP4's two levels)."""
TENSOR_SCALE_KEY = "{}_tensor_scale"
"""State key of the per-tensor fp32 scale of a slot in a format with :attr:`Format.tensor_scale`."""


def options_of(fmt: str) -> str:
    """The options that select format ``fmt``, for messages (``"state_dtype='fp4_e2m1',
    state_scale='e4m3'"``)."""
    f = FORMATS.get(fmt)
    if f is not None and f.option_of is not None:
        return f"state_dtype={f.option_of[0]!r}, state_scale={f.option_of[1]!r}"
    return f"state_dtype={fmt!r}"


def format_for(state_dtype: str, state_scale: str | None) -> str:
    """The storage format a group's ``state_dtype`` and ``state_scale`` select."""
    for n, f in FORMATS.items():
        if f.option_of == (state_dtype, state_scale):
            return n
    return state_dtype
E8M0_BIAS = 127
MAX_POW2_BLOCK = 256
"""The largest ``state_block`` of a power-of-two-scaled (MX) format."""


def block_of(fmt: str, state_block: int | None) -> int:
    """``state_block`` as a group gives it (None: the default block of format ``fmt``)."""
    if state_block is not None:
        return state_block
    return FORMATS[fmt].default_block if fmt in FORMATS else FORMATS["fp8_e4m3"].default_block


def scale_dtype(fmt: str) -> torch.dtype:
    """The dtype of block-scaled format ``fmt``'s stored scales."""
    return SCALE_TYPES[FORMATS[fmt].scale]
SCALE_KEY = "{}_scale"
"""State key of a block-scaled slot's scales (``SCALE_KEY.format("m") == "m_scale"``); used only
through :mod:`signopt.state_layout`."""


# ------------------------------------------------------------------------------ scalars
@dataclass(frozen=True)
class Scalar:
    """A per-step scalar the host computes once (:mod:`signopt.scalars`) and kernels read."""

    name: str
    ctype: str  # "float" (fp32) or "double"
    doc: str


SCALARS = (
    Scalar("lr", "float", "learning rate"),
    Scalar("decay", "float", "multiplier of p before the update (weight decay)"),
    Scalar("l2", "float", "coefficient of p added to the gradient (wd_mode='l2')"),
    Scalar("beta1", "float", "first EMA coefficient"),
    Scalar("omb1", "float", "1 - beta1, rounded once"),
    Scalar("beta2", "float", "second EMA coefficient"),
    Scalar("omb2", "float", "1 - beta2, rounded once"),
    Scalar("eps", "float", "adamw base: added to sqrt(v_hat)"),
    Scalar("huber_delta", "float", "huber kappa: clip(c/delta, -1, 1)"),
    Scalar("p_minus_1", "float", "lp kappa: exponent of |c|"),
    Scalar("envelope_decay", "float", "gamma in G <- max(G*gamma, |src|)"),
    Scalar("lp_p", "double", "lp kappa: p of the fp64 norm sum"),
    Scalar("lp_root", "double", "lp kappa: (p-1)/p, the root of that sum"),
)
SCALAR_NAMES = tuple(s.name for s in SCALARS)
TENSOR_SCALARS = ("lr", "decay")
"""Scalars that may be a 1-element tensor (a tensor lr): ``signopt::step`` takes such a value as
its optional ``<name>_tensor`` argument."""

STEP_STATS = ("update_sq_sum", "sign_flips", "nonfinite", "m_absmax", "v_absmax", "G_absmax")
"""The per-call step statistics (``step_stats=True``), in the order of ``signopt::step``'s ``stats``
buffer (one fp64 tensor of this many values that every call of a group's step accumulates into):
the fp64 sum of the squared update, the count of reversed update signs, the count of non-finite
gradient elements and the NaN-propagating max of |new value| of each state slot (see
docs/optimizers.md, "Step statistics")."""

FLAGS = ("maximize", "cautious", "envelope_from_grad", "state_stochastic_rounding",
         "param_stochastic_rounding")
"""Per-group booleans a kernel reads (besides the kind, formats, envelope and block)."""


# ------------------------------------------------------------------------------ kinds
@dataclass(frozen=True)
class Slot:
    """One state tensor: its key and the cell it keeps a value for (``"element"``, or
    ``"envelope"``: one value per envelope cell of the rule — element, row, block or tensor)."""

    name: str
    cell: str


M, V, G = Slot("m", "element"), Slot("v", "element"), Slot("G", "envelope")
STEP_LISTS = {M.name: ("m", "m_scale", "m_tensor_scale"), V.name: ("v", "v_scale", "v_tensor_scale"),
              G.name: ("env", "env_scale", "env_tensor_scale")}
"""``signopt::step``'s tensor lists of each slot: its stored tensors, their block scales and their
per-tensor fp32 scales (formats with :attr:`Format.tensor_scale`: NVFP4)."""


@dataclass(frozen=True)
class Kind:
    """A fused kernel kind: the rules it runs (``family`` with one of ``variants``: kappas for
    Lion, bases for the stochastic family), the state it keeps, the scalars it reads, its
    reduction (``"kappa_norm"``, ``"envelope"`` for non-element envelopes, or None), the
    purposes it draws random bits for (besides state/parameter rounding, which any kind may) and
    whether it reads per-tensor bias corrections (``signopt::step``'s ``bias``)."""

    id: int
    name: str
    family: str
    variants: tuple[str, ...]
    slots: tuple[Slot, ...]
    scalars: tuple[str, ...]
    reduction: str | None = None
    random: tuple[str, ...] = ()
    bias_correction: bool = False


_PROLOGUE = ("lr", "decay", "l2")
_EMA1 = ("beta1", "omb1")
_EMA2 = ("beta2", "omb2")
_STO = ("envelope_decay",)
KINDS = (
    Kind(0, "sign", "sign", (), (), _PROLOGUE),
    Kind(1, "signum", "signum", (), (M,), _PROLOGUE + _EMA1),
    Kind(2, "lion_l1", "lion", ("l1",), (M,), _PROLOGUE + _EMA1 + _EMA2),
    Kind(3, "lion_l2sq", "lion", ("l2sq",), (M,), _PROLOGUE + _EMA1 + _EMA2),
    Kind(4, "lion_huber", "lion", ("huber",), (M,), _PROLOGUE + _EMA1 + _EMA2 + ("huber_delta",)),
    Kind(5, "lion_norm", "lion", ("l2", "row_l2"), (M,), _PROLOGUE + _EMA1 + _EMA2, "kappa_norm"),
    Kind(6, "lion_lp", "lion", ("lp",), (M,),
         _PROLOGUE + _EMA1 + _EMA2 + ("p_minus_1", "lp_p", "lp_root"), "kappa_norm"),
    Kind(7, "sto_sgd", "stochastic", ("sgd",), (G,), _PROLOGUE + _STO, "envelope", ("sign",)),
    Kind(8, "sto_momentum", "stochastic", ("momentum",), (M, G), _PROLOGUE + _EMA1 + _STO,
         "envelope", ("sign",)),
    Kind(9, "sto_lion", "stochastic", ("lion",), (M, G), _PROLOGUE + _EMA1 + _EMA2 + _STO,
         "envelope", ("sign",)),
    Kind(10, "sto_adamw", "stochastic", ("adamw",), (M, V, G),
         _PROLOGUE + _EMA1 + _EMA2 + ("eps",) + _STO, "envelope", ("sign",), bias_correction=True),
)
KINDS_BY_NAME = {k.name: k for k in KINDS}


def kind(family: str, kappa: str = "l1", base: str = "momentum") -> Kind:
    """The kernel kind of a rule (``ValueError`` naming the choice without one)."""
    variant = {"lion": kappa, "stochastic": base}.get(family)
    for k in KINDS:
        if k.family == family and (variant is None or variant in k.variants):
            return k
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {tuple(FAMILIES)}, got {family!r}")
    what = "kappa" if family == "lion" else "base"
    raise ValueError(f"{what} {variant!r} has no fused kernel")


def family_slots(family: str, base: str = "momentum") -> tuple[Slot, ...]:
    """The state slots a rule keeps (whatever its kappa: a callable kappa keeps Lion's)."""
    return kind(family, "l1", base).slots


# ------------------------------------------------------------------------------ C++ header
def _cpp_enum(name: str, prefix: str, ids: dict[str, int]) -> list[str]:
    body = ", ".join(f"{prefix}{n.upper()} = {i}" for n, i in ids.items())
    return [f"enum {name} : int {{ {body}, {prefix}COUNT = {len(ids)} }};"]


def _cpp_bool(name: str, arg: str, true_ids: list[str]) -> str:
    test = " || ".join(f"{arg} == {i}" for i in true_ids) or "false"
    return f"SIGNOPT_DECL bool {name}(int {arg}) {{ return {test}; }}"


def _cpp_switch(ctype: str, name: str, arg: str, cases: list[tuple[str, str]], default: str) -> str:
    body = " ".join(f"case {i}: return {v};" for i, v in cases)
    return f"SIGNOPT_DECL {ctype} {name}(int {arg}) {{ switch ({arg}) {{ {body} default: return {default}; }} }}"


def _f32_literal(x: float) -> str:
    return f"{x!r}f"


_CPP_TYPES = {"Tensor(a!)[]": "at::TensorList", "Tensor[]": "at::TensorList", "int": "int64_t",
              "bool": "bool", "float": "double", "int[]": "at::IntArrayRef", "float[]": "at::ArrayRef<double>",
              "Tensor?": "const c10::optional<at::Tensor>&"}
# The same arguments as owned values (torch.classes methods take these: csrc/group_step.cpp).
_CPP_VALUE_TYPES = {"Tensor(a!)[]": "std::vector<at::Tensor>", "Tensor[]": "std::vector<at::Tensor>",
                    "int": "int64_t", "bool": "bool", "float": "double", "int[]": "std::vector<int64_t>",
                    "float[]": "std::vector<double>", "Tensor?": "c10::optional<at::Tensor>"}


def step_arguments() -> tuple[tuple[str, str, bool], ...]:
    """``signopt::step``'s arguments as ``(schema type, name, keyword-only)``, in order.

    The thirteen tensor lists come by position (a list the rule does not use is empty; ``signs`` (one
    int8 previous update sign per element of each tensor) and ``stats`` (one fp64 tensor of
    :data:`STEP_STATS` values, accumulated into) are both empty unless step statistics are on); everything
    else by name: the kernel kind, formats and flags, the :data:`SCALARS`, per-tensor ``keys``
    (two uint32 Philox key words; empty when the call draws no random bits), ``offsets`` (index
    of element 0 in the full tensor), ``seglens`` (reduction segment, 0: none) and ``bias``
    (AdamW's two bias corrections; empty unless the kind bias-corrects), and optional tensors:
    ``lr_tensor``/``decay_tensor`` replace ``lr``/``decay`` (a tensor lr), ``inv_scale`` and
    ``found_inf`` come from a GradScaler."""
    lists = [("Tensor(a!)[]", n, False) for n in ("params",)] + [("Tensor[]", "grads", False)]
    lists += [("Tensor(a!)[]", codes, False) for codes, _, _ in STEP_LISTS.values()]
    lists += [("Tensor(a!)[]", scales, False) for _, scales, _ in STEP_LISTS.values()]
    lists += [("Tensor(a!)[]", tscales, False) for _, _, tscales in STEP_LISTS.values()]
    lists += [("Tensor(a!)[]", n, False) for n in ("signs", "stats")]
    named = [("int", n, True) for n in ("kind", "param_format", "state_format", "state_block", "envelope")]
    named += [("bool", f, True) for f in FLAGS]
    named += [("float", s.name, True) for s in SCALARS]
    named += [("int[]", "keys", True), ("int[]", "offsets", True), ("int[]", "seglens", True),
              ("float[]", "bias", True)]
    named += [("Tensor?", f"{n}_tensor", True) for n in TENSOR_SCALARS]
    named += [("Tensor?", n, True) for n in ("inv_scale", "found_inf")]
    return tuple(lists + named)


def step_schema() -> str:
    """The schema of ``signopt::step`` (see :func:`step_arguments`); returns the non-finite
    gradient count (0-dim int64)."""
    alias = iter("abcdefghijkl")
    parts, star = [], False
    for typ, name, kw in step_arguments():
        if kw and not star:
            parts.append("*")
            star = True
        if "(a!)" in typ:
            typ = typ.replace("(a!)", f"({next(alias)}!)")
        parts.append(f"{typ} {name}" + ("=None" if typ == "Tensor?" else ""))
    return f"step({', '.join(parts)}) -> Tensor"


def _held_role(name: str) -> str:
    """How ``torch.classes.signopt.GroupStep`` (csrc/group_step.cpp) gets each argument of
    ``signopt::step``: ``"slots"`` (params and grads: its own), ``"fixed"`` (given once per call by
    ``add_call``: state lists, kind, formats, flags, offsets, segment lengths), ``"derived"``
    (per-slot keys and bias corrections: it derives them from its step counters, see ``advance``)
    or ``"step"`` (given to every ``run``: the scalars and the optional tensors)."""
    if name in ("params", "grads"):
        return "slots"
    if name in ("keys", "bias"):
        return "derived"
    if name in SCALAR_NAMES:
        return "step"
    return "step" if dict((n, t) for t, n, _ in step_arguments())[name] == "Tensor?" else "fixed"


def held_run_tensors() -> tuple[str, ...]:
    """The optional tensors ``torch.classes.signopt.GroupStep.run`` takes after the list of
    the :data:`SCALARS` values (in their order), in order: ``signopt::step``'s per-step
    arguments but the scalars (one list: each argument costs a conversion per call) and the keys
    and bias corrections the held step derives itself."""
    return tuple(n for _, n, _ in step_arguments() if _held_role(n) == "step" and n not in SCALAR_NAMES)


def _cpp_step_macros() -> list[str]:
    args = step_arguments()
    schema = step_schema().replace("\\", "\\\\").replace('"', '\\"')
    fixed = [(t, n) for t, n, _ in args if _held_role(n) == "fixed"]
    step = [(t, n) for t, n, _ in args if _held_role(n) == "step" and n not in SCALAR_NAMES]
    held_call = []
    for t, n, _ in args:
        role = _held_role(n)
        if n == "params":
            held_call.append("(CALL).params")
        elif role == "slots" or n in ("keys", "bias"):
            held_call.append(n.upper())
        else:
            held_call.append(f"(CALL).{n}" if role == "fixed" else n)
    flag_fill = [f"(S).{f} = (int)({f});" for f in FLAGS]
    scalar_fill = [f"(S).{s.name} = ({s.ctype})({s.name});" for s in SCALARS]
    return [
        f'#define SIGNOPT_STEP_SCHEMA "{schema}"',
        "// signopt::step's C++ parameters and arguments, in schema order (ATen callers only)",
        "#define SIGNOPT_STEP_PARAMS " + ", ".join(f"{_CPP_TYPES[t]} {n}" for t, n, _ in args),
        "#define SIGNOPT_STEP_ARGS " + ", ".join(n for _, n, _ in args),
        "// Scalars S from signopt::step's named arguments in scope (no GradScaler yet)",
        "#define SIGNOPT_SCALARS_FROM_ARGS(S) do { " + " ".join(scalar_fill + flag_fill)
        + " (S).envelope = (int)(envelope); (S).inv_scale = 1.0f; (S).has_inv_scale = 0; } while (0)",
        "// torch.classes.signopt.GroupStep: the arguments add_call keeps per call (members, parameters",
        "// by value, names, the store into call CALL) and those every run() takes (parameters, names)",
        "#define SIGNOPT_HELD_FIELDS " + " ".join(f"{_CPP_VALUE_TYPES[t]} {n};" for t, n in fixed),
        "#define SIGNOPT_HELD_PARAMS " + ", ".join(f"{_CPP_VALUE_TYPES[t]} {n}" for t, n in fixed),
        "#define SIGNOPT_HELD_NAMES " + ", ".join(f'torch::arg("{n}")' for _, n in fixed),
        "#define SIGNOPT_HELD_STORE(CALL) " + " ".join(f"(CALL).{n} = std::move({n});" for _, n in fixed),
        "#define SIGNOPT_HELD_RUN_PARAMS std::vector<double> scalars, " + ", ".join(
            f"{_CPP_VALUE_TYPES[t]} {n}" for t, n in step),
        "#define SIGNOPT_HELD_RUN_NAMES torch::arg(\"scalars\"), " + ", ".join(
            f'torch::arg("{n}")' + (" = torch::arg::none()" if t == "Tensor?" else "") for t, n in step),
        "// run()'s scalars by name from its list V (in SCALARS order)",
        f"#define SIGNOPT_HELD_SCALAR_COUNT {len(SCALARS)}",
        "#define SIGNOPT_HELD_UNPACK_SCALARS(V) " + " ".join(
            f"const double {sc.name} = (V)[{i}];" for i, sc in enumerate(SCALARS)),
        "// signopt::step's arguments from held call CALL, this step's GRADS and the call's KEYS and BIAS",
        "// (the other per-step arguments by their names in scope)",
        "#define SIGNOPT_HELD_CALL_ARGS(CALL, GRADS, KEYS, BIAS) " + ", ".join(held_call),
    ]


def kernel_group(k: Kind) -> str:
    """The C++ kernel template that runs kind ``k`` (one CPU translation unit each):
    ``sign`` (no reduction, at most ``m``), ``lion``, ``lion_norm`` (a kappa norm pass) or
    ``stochastic`` (an envelope)."""
    if k.family in ("sign", "signum"):
        return "sign"
    if k.family == "lion":
        return "lion_norm" if k.reduction == "kappa_norm" else "lion"
    return "stochastic"


def _cpp_dispatch_lists() -> list[str]:
    """X-macro lists the C++ code dispatches over, so a new kind or format is one entry here."""
    groups: dict[str, list[str]] = {}
    for k in sorted(KINDS, key=lambda k: k.id):
        groups.setdefault(kernel_group(k), []).append(f"X(K_{k.name.upper()})")
    lines = ["// dispatch lists: SIGNOPT_KINDS(X) calls X(kind) for every kind, SIGNOPT_KINDS_<GROUP>(X)",
             "// for the kinds one kernel template runs, SIGNOPT_FORMATS(X) / SIGNOPT_STATE_FORMATS(X) /",
             "// SIGNOPT_PARAM_FORMATS(X) call X(format id, codec type) for every format / state format /",
             "// parameter format that has a C++ codec"]
    lines.append("#define SIGNOPT_KINDS(X) " + " ".join(f"X(K_{k.name.upper()})" for k in sorted(KINDS, key=lambda k: k.id)))
    lines += [f"#define SIGNOPT_KINDS_{g.upper()}(X) " + " ".join(ks) for g, ks in groups.items()]
    fmts = sorted((f for f in FORMATS.values() if f.codec is not None), key=lambda f: f.id)
    lines.append("#define SIGNOPT_FORMATS(X) " + " ".join(f"X(FMT_{f.name.upper()}, {f.codec})" for f in fmts))
    for what in ("state", "param"):
        lines.append(f"#define SIGNOPT_{what.upper()}_FORMATS(X) "
                     + " ".join(f"X(FMT_{f.name.upper()}, {f.codec})" for f in fmts if getattr(f, what)))
    return lines


def cpp_header() -> str:
    """The C++ header generated from this module (``signopt_declaration.h`` in the build).

    Ids are enums; the per-kind and per-format facts are ``constexpr`` functions of an id
    (``kind_has_m(k)``, ``fmt_block_scaled(f)``, ...), usable in constant expressions and in host
    and device code alike (nvcc lets host code read no ``__device__`` table)."""
    lines = [
        "// Generated by signopt.declaration.cpp_header() at build time; do not edit.",
        "#pragma once",
        "#include <stdint.h>",
        "#if defined(__CUDACC__)",
        "#define SIGNOPT_DECL __host__ __device__ constexpr inline",
        "#else",
        "#define SIGNOPT_DECL constexpr inline",
        "#endif",
        "namespace signopt {",
    ]
    lines += _cpp_enum("Kind", "K_", {k.name: k.id for k in KINDS})
    lines += _cpp_enum("Family", "FAMILY_", FAMILIES)
    lines += _cpp_enum("Envelope", "ENV_", ENVELOPES)
    lines += _cpp_enum("Fmt", "FMT_", {f.name: f.id for f in FORMATS.values()})
    lines += _cpp_enum("Stat", "STAT_", {n: i for i, n in enumerate(STEP_STATS)})
    kid = {k.name: f"K_{k.name.upper()}" for k in KINDS}
    lines.append("// per kind: its family, its state slots, its reduction, its random bits, its bias corrections")
    lines.append(_cpp_switch("int", "kind_family", "k", [(kid[k.name], f"FAMILY_{k.family.upper()}") for k in KINDS],
                             "-1"))
    for fn, test in (("kind_has_m", lambda k: M in k.slots), ("kind_has_v", lambda k: V in k.slots),
                     ("kind_has_env", lambda k: G in k.slots),
                     ("kind_kappa_norm", lambda k: k.reduction == "kappa_norm"),
                     ("kind_draws_sign", lambda k: "sign" in k.random),
                     ("kind_bias_correction", lambda k: k.bias_correction)):
        lines.append(_cpp_bool(fn, "k", [kid[k.name] for k in KINDS if test(k)]))
    fid = {f.name: f"FMT_{f.name.upper()}" for f in FORMATS.values()}
    fmts = list(FORMATS.values())
    lines.append("// per storage format")
    lines.append(_cpp_switch("int", "fmt_bits", "f", [(fid[f.name], str(f.bits)) for f in fmts], "0"))
    for fn, attr in (("fmt_block_scaled", "block_scaled"), ("fmt_param", "param"), ("fmt_state", "state")):
        lines.append(_cpp_bool(fn, "f", [fid[f.name] for f in fmts if getattr(f, attr)]))
    lines.append(_cpp_switch("int", "fmt_mantissa_bits", "f", [(fid[f.name], str(f.mantissa_bits)) for f in fmts],
                             "0"))
    lines.append(_cpp_switch("int", "fmt_emin", "f", [(fid[f.name], str(f.emin)) for f in fmts], "0"))
    lines.append(_cpp_switch("float", "fmt_max_finite", "f",
                             [(fid[f.name], _f32_literal(f.max_finite)) for f in fmts], "0.0f"))
    lines.append("// block scales: E8M0 (a power of two, stored as its biased exponent byte) or fp32")
    lines.append(_cpp_bool("fmt_scale_e8m0", "f", [fid[f.name] for f in fmts if f.scale == "e8m0"]))
    lines.append("// E4M3 block scales relative to one fp32 scale per tensor (NVFP4)")
    lines.append(_cpp_bool("fmt_tensor_scale", "f", [fid[f.name] for f in fmts if f.tensor_scale]))
    lines.append("// packed 4-bit codes: two a byte, ceil(numel/2) bytes")
    lines.append(_cpp_bool("fmt_packed", "f", [fid[f.name] for f in fmts if f.packed]))
    lines.append(_cpp_switch("int", "fmt_emax", "f", [(fid[f.name], str(f.emax)) for f in fmts], "0"))
    lines.append(f"constexpr int E8M0_BIAS = {E8M0_BIAS};")
    lines += [f"constexpr int PURPOSE_{p.upper()} = {w};  // third Philox counter word of the {p} draws"
              for p, w in RANDOM_PURPOSES.items()]
    lines += _cpp_dispatch_lists()
    lines.append("// fp32 scalars of one group step (host-computed: signopt/scalars.py), plus flags.")
    lines.append("struct Scalars {")
    lines += [f"  {s.ctype} {s.name};  // {s.doc}" for s in SCALARS]
    lines += ["  float inv_scale;  // 1/grad_scale (has_inv_scale)", "  int has_inv_scale;"]
    lines += [f"  int {f};" for f in FLAGS]
    lines += ["  int envelope;  // Envelope", "};"]
    lines += _cpp_step_macros()
    lines.append("}  // namespace signopt")
    return "\n".join(lines) + "\n"
