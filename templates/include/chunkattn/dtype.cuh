// chunkattn/dtype.cuh — storage types of the CUDA source (nvcc and the cucpu shim alike) and
// their conversions to the fp32 we accumulate in.
#ifndef CHUNKATTN_DTYPE_CUH_
#define CHUNKATTN_DTYPE_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "chunkattn/abi.h"
#include "chunkattn/variant.h"

namespace ca {

using f16 = __half;
using bf16 = __nv_bfloat16;

CA_HD float to_float(f16 x) { return __half2float(x); }
CA_HD float to_float(bf16 x) { return __bfloat162float(x); }
CA_HD float to_float(float x) { return x; }

template <class T>
CA_HD T from_float(float x);
template <>
CA_HD f16 from_float<f16>(float x) {
  return __float2half_rn(x);
}
template <>
CA_HD bf16 from_float<bf16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
CA_HD float from_float<float>(float x) {
  return x;
}

// The CaDType of a storage type.
template <class T>
struct DTypeOf;
template <>
struct DTypeOf<f16> {
  static constexpr int value = CA_F16;
};
template <>
struct DTypeOf<bf16> {
  static constexpr int value = CA_BF16;
};
template <>
struct DTypeOf<float> {
  static constexpr int value = CA_F32;
};

}  // namespace ca

#endif  // CHUNKATTN_DTYPE_CUH_
