// Entry points declared in rmlx.h whose kernels have not landed yet. Each answers RMLX_E_UNSUPPORTED so that
// the library always loads; an entry is deleted here when its real implementation is added elsewhere.
#include "common.h"

using namespace rmlx;

extern "C" {

}  // extern "C"
