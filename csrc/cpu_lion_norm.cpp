// CPU instantiations: Lion-kappa with a reduction (l2 and row_l2: c/norm; lp).
#include "cpu_kernels.h"

namespace signopt {
namespace cpu {

int64_t run_lion_norm(int kind, int pfmt, int sfmt, const Call& call) {
  if (kind == K_LION_NORM) return run_group<K_LION_NORM>(pfmt, sfmt, call);
  return run_group<K_LION_LP>(pfmt, sfmt, call);
}

}  // namespace cpu
}  // namespace signopt
