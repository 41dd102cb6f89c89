// wgmma wrappers (A from registers, B from a shared-memory descriptor, fp32 accumulate).
// d: the N/2 fp32 accumulator registers of this thread; scale_d = 0 overwrites d (D = A B).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace jetspec {
namespace tree_attn {

// Each wrapper is written once and specialised per input type by a macro (TYPE: the C++ type,
// PTX: its wgmma type string).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define JETSPEC_WGMMA_ASM(...) asm volatile(__VA_ARGS__)
#else
#define JETSPEC_WGMMA_ASM(...) __trap()
#endif

// m64n64k16 with B K-major (wgmma_m64n64k16_kmajor: S = Q K^T, K rows in the 128-byte swizzle)
// or MN-major (wgmma_m64n64k16_nmajor: P V at D = 64, V rows in the 128-byte swizzle); TRANS_B
// is wgmma's transpose-B immediate.
template <typename T>
__device__ __forceinline__ void wgmma_m64n64k16_kmajor(float* d, const uint32_t (&a)[4], uint64_t desc_b, int scale_d);
template <typename T>
__device__ __forceinline__ void wgmma_m64n64k16_nmajor(float* d, const uint32_t (&a)[4], uint64_t desc_b, int scale_d);
#define JETSPEC_WGMMA_M64N64K16(FN, TRANS_B, TYPE, PTX)                                                                                                                                                                                                                                                                                                                                                                                      \
  template <>                                                                                                                                                                                                                                                                                                                                                                                                                                \
  __device__ __forceinline__ void FN<TYPE>(float* d, const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {                                                                                                                                                                                                                                                                                                                                 \
    JETSPEC_WGMMA_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"                                                                                                                                                                                                                                                                                                                                                                           \
                      "wgmma.mma_async.sync.aligned.m64n64k16.f32." PTX "." PTX " "                                                                                                                                                                                                                                                                                                                                                          \
                      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "                                                                                                                                                                                                                                                             \
                      "{%32, %33, %34, %35}, %36, p, 1, 1, " #TRANS_B ";\n}\n"                                                                                                                                                                                                                                                                                                                                                               \
                      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]) \
                      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d)                                                                                                                                                                                                                                                                                                                                                \
                      : "memory");                                                                                                                                                                                                                                                                                                                                                                                                           \
  }
JETSPEC_WGMMA_M64N64K16(wgmma_m64n64k16_kmajor, 0, __nv_bfloat16, "bf16")
JETSPEC_WGMMA_M64N64K16(wgmma_m64n64k16_kmajor, 0, __half, "f16")
JETSPEC_WGMMA_M64N64K16(wgmma_m64n64k16_nmajor, 1, __nv_bfloat16, "bf16")
JETSPEC_WGMMA_M64N64K16(wgmma_m64n64k16_nmajor, 1, __half, "f16")
#undef JETSPEC_WGMMA_M64N64K16

// m64n128k16 with B MN-major (P V at D = 128).
template <typename T>
__device__ __forceinline__ void wgmma_m64n128k16_nmajor(float* d, const uint32_t (&a)[4], uint64_t desc_b, int scale_d);
#define JETSPEC_WGMMA_M64N128K16_NMAJOR(TYPE, PTX)                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                           \
  template <>                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                \
  __device__ __forceinline__ void wgmma_m64n128k16_nmajor<TYPE>(float* d, const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                            \
    JETSPEC_WGMMA_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                           \
                      "wgmma.mma_async.sync.aligned.m64n128k16.f32." PTX "." PTX " "                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                         \
                      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                             \
                      "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                          \
                      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]) \
                      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d)                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                \
                      : "memory");                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                                           \
  }
JETSPEC_WGMMA_M64N128K16_NMAJOR(__nv_bfloat16, "bf16")
JETSPEC_WGMMA_M64N128K16_NMAJOR(__half, "f16")
#undef JETSPEC_WGMMA_M64N128K16_NMAJOR

// m64n8k16 (row sums of P on the tensor cores: B is a tile of ones; its layout does not matter).
template <typename T>
__device__ __forceinline__ void wgmma_m64n8k16(float* d, const uint32_t (&a)[4], uint64_t desc_b);
#define JETSPEC_WGMMA_M64N8K16(TYPE, PTX)                                                                   \
  template <>                                                                                               \
  __device__ __forceinline__ void wgmma_m64n8k16<TYPE>(float* d, const uint32_t (&a)[4], uint64_t desc_b) { \
    JETSPEC_WGMMA_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"                                          \
                      "wgmma.mma_async.sync.aligned.m64n8k16.f32." PTX "." PTX                              \
                      " {%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, p, 1, 1, 0;\n}\n"                           \
                      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                      \
                      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1)                     \
                      : "memory");                                                                          \
  }
JETSPEC_WGMMA_M64N8K16(__nv_bfloat16, "bf16")
JETSPEC_WGMMA_M64N8K16(__half, "f16")
#undef JETSPEC_WGMMA_M64N8K16

// m64n136k16 with B MN-major (128B swizzle): O (64 columns' fragments, d[0..63]) and, in the same
// product, the 8 columns past the V tile (d[64..67] -> l): the row sums of P when the 64-column
// chunk after the tile's two holds ones (split_kernel_ws, D = 128).
template <typename T>
__device__ __forceinline__ void wgmma_m64n136k16_nmajor(float* o, float* l, const uint32_t (&a)[4], uint64_t desc_b);
#define JETSPEC_WGMMA_M64N136K16_NMAJOR(TYPE, PTX)                                                           \
  template <>                                                                                                \
  __device__ __forceinline__ void wgmma_m64n136k16_nmajor<TYPE>(float* o, float* l, const uint32_t (&a)[4], \
                                                                uint64_t desc_b) {                           \
    JETSPEC_WGMMA_ASM("{\n.reg .pred p;\nsetp.ne.b32 p, %73, 0;\n"                                         \
                      "wgmma.mma_async.sync.aligned.m64n136k16.f32." PTX "." PTX " "                        \
                      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67}, "                                                      \
                      "{%68, %69, %70, %71}, %72, p, 1, 1, 1;\n}\n"                                         \
                      : "+f"(o[0]), "+f"(o[1]), "+f"(o[2]), "+f"(o[3]), "+f"(o[4]), "+f"(o[5]), "+f"(o[6]), "+f"(o[7]), "+f"(o[8]), "+f"(o[9]), "+f"(o[10]), "+f"(o[11]), "+f"(o[12]), "+f"(o[13]), "+f"(o[14]), "+f"(o[15]), "+f"(o[16]), "+f"(o[17]), "+f"(o[18]), "+f"(o[19]), "+f"(o[20]), "+f"(o[21]), "+f"(o[22]), "+f"(o[23]), "+f"(o[24]), "+f"(o[25]), "+f"(o[26]), "+f"(o[27]), "+f"(o[28]), "+f"(o[29]), "+f"(o[30]), "+f"(o[31]), "+f"(o[32]), "+f"(o[33]), "+f"(o[34]), "+f"(o[35]), "+f"(o[36]), "+f"(o[37]), "+f"(o[38]), "+f"(o[39]), "+f"(o[40]), "+f"(o[41]), "+f"(o[42]), "+f"(o[43]), "+f"(o[44]), "+f"(o[45]), "+f"(o[46]), "+f"(o[47]), "+f"(o[48]), "+f"(o[49]), "+f"(o[50]), "+f"(o[51]), "+f"(o[52]), "+f"(o[53]), "+f"(o[54]), "+f"(o[55]), "+f"(o[56]), "+f"(o[57]), "+f"(o[58]), "+f"(o[59]), "+f"(o[60]), "+f"(o[61]), "+f"(o[62]), "+f"(o[63]),                                                                               \
                        "+f"(l[0]), "+f"(l[1]), "+f"(l[2]), "+f"(l[3])                                      \
                      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(1)                     \
                      : "memory");                                                                          \
  }
JETSPEC_WGMMA_M64N136K16_NMAJOR(__nv_bfloat16, "bf16")
JETSPEC_WGMMA_M64N136K16_NMAJOR(__half, "f16")
#undef JETSPEC_WGMMA_M64N136K16_NMAJOR
#undef JETSPEC_WGMMA_ASM

}  // namespace tree_attn
}  // namespace jetspec
