// CPU instantiations: the stochastic-sign family (bases sgd, momentum, lion, adamw).
#include "cpu_kernels.h"

namespace signopt {
namespace cpu {

int64_t run_stochastic(int kind, int pfmt, int sfmt, const Call& call) {
  switch (kind) {
    case K_STO_SGD: return run_group<K_STO_SGD>(pfmt, sfmt, call);
    case K_STO_MOMENTUM: return run_group<K_STO_MOMENTUM>(pfmt, sfmt, call);
    case K_STO_LION: return run_group<K_STO_LION>(pfmt, sfmt, call);
    default: return run_group<K_STO_ADAMW>(pfmt, sfmt, call);
  }
}

}  // namespace cpu
}  // namespace signopt
