// CPU instantiations: Lion and the elementwise Lion-kappa maps (l1, l2sq, huber).
#include "cpu_kernels.h"

namespace signopt {
namespace cpu {

int64_t run_lion(int kind, int pfmt, int sfmt, const Call& call) {
  switch (kind) {
    case K_LION_L1: return run_group<K_LION_L1>(pfmt, sfmt, call);
    case K_LION_L2SQ: return run_group<K_LION_L2SQ>(pfmt, sfmt, call);
    default: return run_group<K_LION_HUBER>(pfmt, sfmt, call);
  }
}

}  // namespace cpu
}  // namespace signopt
