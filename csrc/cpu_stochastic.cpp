// CPU instantiations of the kinds in SIGNOPT_KINDS_STOCHASTIC (the stochastic-sign family).
#include "cpu_kernels.h"

namespace signopt {
namespace cpu {

int64_t run_stochastic(int kind, int pfmt, int sfmt, const Call& call) {
  switch (kind) { SIGNOPT_KINDS_STOCHASTIC(SIGNOPT_RUN_GROUP_CASE) }
  throw std::invalid_argument("signopt: run_stochastic got a kind outside SIGNOPT_KINDS_STOCHASTIC");
}

}  // namespace cpu
}  // namespace signopt
