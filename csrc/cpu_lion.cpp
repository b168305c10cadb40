// CPU instantiations of the kinds in SIGNOPT_KINDS_LION (Lion and the elementwise Lion-kappa maps).
#include "cpu_kernels.h"

namespace signopt {
namespace cpu {

int64_t run_lion(int kind, int pfmt, int sfmt, const Call& call) {
  switch (kind) { SIGNOPT_KINDS_LION(SIGNOPT_RUN_GROUP_CASE) }
  throw std::invalid_argument("signopt: run_lion got a kind outside SIGNOPT_KINDS_LION");
}

}  // namespace cpu
}  // namespace signopt
