// CPU instantiations of the kinds in SIGNOPT_KINDS_SIGN (signSGD, Signum).
#include "cpu_kernels.h"

namespace signopt {
namespace cpu {

int64_t run_sign(int kind, int pfmt, int sfmt, const Call& call) {
  switch (kind) { SIGNOPT_KINDS_SIGN(SIGNOPT_RUN_GROUP_CASE) }
  throw std::invalid_argument("signopt: run_sign got a kind outside SIGNOPT_KINDS_SIGN");
}

}  // namespace cpu
}  // namespace signopt
