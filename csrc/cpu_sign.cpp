// CPU instantiations: signSGD and Signum.
#include "cpu_kernels.h"

namespace signopt {
namespace cpu {

int64_t run_sign(int kind, int pfmt, int sfmt, const Call& call) {
  if (kind == K_SIGN) return run_group<K_SIGN>(pfmt, sfmt, call);
  return run_group<K_SIGNUM>(pfmt, sfmt, call);
}

}  // namespace cpu
}  // namespace signopt
