// CPU instantiations of the kinds in SIGNOPT_KINDS_LION_NORM (Lion-kappa with a norm pass).
#include "cpu_kernels.h"

namespace signopt {
namespace cpu {

int64_t run_lion_norm(int kind, int pfmt, int sfmt, const Call& call) {
  switch (kind) { SIGNOPT_KINDS_LION_NORM(SIGNOPT_RUN_GROUP_CASE) }
  throw std::invalid_argument("signopt: run_lion_norm got a kind outside SIGNOPT_KINDS_LION_NORM");
}

}  // namespace cpu
}  // namespace signopt
