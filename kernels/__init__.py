"""``signopt.kernels``: Triton kernels for every signopt update rule (the ``"triton"`` backend).

Liger-Kernel style: each op sits beside its pure-torch statement, which is
:mod:`signopt.reference` (with :mod:`signopt.casting`, :mod:`signopt.state_format`,
:mod:`signopt.philox`, :mod:`signopt.kappa`); the kernels reproduce it bit for bit wherever
the numerics contract says so.

Modules:

* :mod:`.numerics` — jitted bit casts (bf16, fp16, FP8), rounding (nearest / stochastic),
  Philox words, exact division / square root, NaN-ignoring max;
* :mod:`.state_io` — loads and stores of parameters and state in every storage format;
* :mod:`.rules` — one jitted function per rule family;
* :mod:`.passes` — the multi-tensor kernels (update, reduction chunks, reduction finalize);
* :mod:`.layout` — the columns of the device-side tensor tables;
* :mod:`.launch` — host side: partitions, tables, launches (no host sync);
* :mod:`.aot` — ahead-of-time compilation for sm_90 and the PTX exactness checks.

Importing this package imports Triton; ``import signopt`` does not import it.
"""
