#include "values.hpp"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>

#include "compat.hpp"
#include "text.hpp"

namespace fakepg {

namespace {

using RedOp = c10d::ReduceOp::RedOpType;

// NOTE [Fast paths]
// A fake collective's Python call costs a few microseconds; one ATen op
// (dispatch, TensorIterator) costs as much again. For plain contiguous CPU
// tensors the backend therefore writes outputs directly: memcpy for copies,
// a typed loop for scaling. Everything else (CUDA, strided, conjugate views,
// mixed dtypes) goes through ATen. Like a real backend's kernels, neither
// path is seen by autograd.
bool plainCpu(const at::Tensor& t) {
  return t.is_cpu() && t.layout() == at::kStrided && t.is_contiguous() &&
         !t.is_conj() && !t.is_neg();
}

bool plainPair(const at::Tensor& dst, const at::Tensor& src) {
  return plainCpu(dst) && plainCpu(src) &&
         dst.scalar_type() == src.scalar_type();
}

bool loopScalable(at::ScalarType type) {
  switch (type) {
    case at::kByte:
    case at::kChar:
    case at::kShort:
    case at::kInt:
    case at::kLong:
    case at::kHalf:
    case at::kBFloat16:
    case at::kFloat:
    case at::kDouble:
      return true;
    default:
      return false;
  }
}

// t *= factor, in place.
void scale(at::Tensor& t, int64_t factor) {
  if (factor == 1 || t.scalar_type() == at::kBool) {
    return;
  }
  if (plainCpu(t) && loopScalable(t.scalar_type())) {
    AT_DISPATCH_ALL_TYPES_AND2(
        at::kHalf, at::kBFloat16, t.scalar_type(), "fakepg_scale", [&] {
          auto* p = t.data_ptr<scalar_t>();
          const auto f = static_cast<scalar_t>(factor);
          for (int64_t i = 0, n = t.numel(); i < n; ++i) {
            p[i] = static_cast<scalar_t>(p[i] * f);
          }
        });
    return;
  }
  t.mul_(factor);
}

at::Tensor flat(const at::Tensor& t) {
  return t.reshape({-1});
}

// NOTE [In-place collectives]
// FSDP2 all-gathers in place: its input is a view of its own chunk of the
// output. ATen refuses a copy between partly overlapping tensors, so the
// source is copied first when it overlaps the destination.
at::Tensor apart(const at::Tensor& src, const at::Tensor& dst) {
  return at::get_overlap_status(dst, src) == at::MemOverlapStatus::Partial
      ? src.clone()
      : src;
}

}  // namespace

// The `numel` elements of flat(t) from `offset`: the bytes in place for a
// plain tensor (no view is made), else an ATen view.
const char* plainBytesAt(const at::Tensor& t, int64_t offset) {
  return static_cast<const char*>(t.data_ptr()) + offset * t.element_size();
}

void copyFlat(const at::Tensor& dst, const at::Tensor& src, int64_t offset) {
  const auto n = dst.numel();
  if (plainPair(dst, src) && offset + n <= src.numel()) {
    std::memmove(dst.data_ptr(), plainBytesAt(src, offset), dst.nbytes());
  } else if (offset == 0 && n == src.numel()) {
    dst.copy_(apart(src, dst).reshape(dst.sizes()));
  } else {
    dst.copy_(apart(flat(src).narrow(0, offset, n), dst).reshape(dst.sizes()));
  }
}

void fillChunks(
    const at::Tensor& out,
    const at::Tensor& in,
    int64_t n,
    int64_t offset) {
  if (out.numel() == 0) {
    return;
  }
  const auto chunk = out.numel() / n;
  if (plainPair(out, in) && offset + chunk <= in.numel()) {
    auto* dst = static_cast<char*>(out.data_ptr());
    const auto* src = plainBytesAt(in, offset);
    const auto bytes = chunk * in.element_size();
    for (int64_t i = 0; i < n; ++i) {
      std::memmove(dst + i * bytes, src, bytes);  // src may be a chunk of out
    }
    return;
  }
  const auto piece = apart(
      offset == 0 && chunk == in.numel()
          ? in.reshape({1, -1})
          : flat(in).narrow(0, offset, chunk).reshape({1, -1}),
      out);
  if (out.is_contiguous()) {
    out.view({n, -1}).copy_(piece);
  } else {
    for (auto& c : flat(out).chunk(n)) {
      c.copy_(piece.reshape({-1}));
    }
  }
}

// NOTE [Uniform values]
// In a `uniform` world every rank is taken to hold exactly the data this rank
// holds. A collective then has a result that one rank can compute alone:
// reducing n equal values x gives n*x for SUM, x for AVG/MIN/MAX/BAND/BOR,
// x^n for PRODUCT, x or 0 for BXOR (odd or even n) and f*n*x for PREMUL_SUM.
void reduceUniform(at::Tensor& t, const c10d::ReduceOp& op, int64_t n) {
  switch (op.op_) {
    case RedOp::SUM:
      scale(t, n);
      return;
    case RedOp::AVG:
    case RedOp::MIN:
    case RedOp::MAX:
    case RedOp::BAND:
    case RedOp::BOR:
      return;
    case RedOp::PRODUCT:
      if (n != 1 && t.scalar_type() != at::kBool) {
        t.pow_(n);
      }
      return;
    case RedOp::BXOR:
      if (n % 2 == 0) {
        t.zero_();
      }
      return;
    case RedOp::PREMUL_SUM: {
      auto* sup =
          dynamic_cast<compat::PreMulSumSupplement*>(op.supplement_.get());
      TORCH_CHECK(sup, "fakepg: PREMUL_SUM without a scaling factor");
      if (sup->tensor_factor.defined()) {
        t.mul_(sup->tensor_factor.to(t.device()) * n);
      } else {
        t.mul_(sup->double_factor * static_cast<double>(n));
      }
      return;
    }
    default:
      TORCH_CHECK(
          false,
          cat("fakepg: unsupported reduce op ", static_cast<int>(op.op_)));
  }
}

void reduceScatterChunk(
    at::Tensor& out,
    const at::Tensor& in,
    int64_t index,
    const c10d::ReduceOp& op,
    int64_t n,
    bool uniform) {
  copyFlat(out, in, index * out.numel());
  if (uniform) {
    reduceUniform(out, op, n);
  }
}

// NOTE [all_to_all under uniform values]
// Peer j sends this rank the chunk of its input meant for this rank. With
// every rank holding the same input and the same split sizes, that chunk is
// this rank's own input chunk number `rank`, so output chunk j is input chunk
// `rank` for every j, and every output split must equal
// input_split_sizes[rank] (the backend checks that before calling this).
void allToAllUniform(
    at::Tensor& output,
    const at::Tensor& input,
    const std::vector<int64_t>& in_splits,
    int rank,
    int size) {
  int64_t rows = 0;
  for (int j = 0; j < rank; ++j) {
    rows += in_splits[j];
  }
  const auto row = input.dim() ? input.numel() / std::max<int64_t>(input.size(0), 1) : 1;
  fillChunks(output, input, size, rows * row);
}

void allToAllCopy(
    at::Tensor& output,
    const at::Tensor& input,
    const std::vector<int64_t>& out_splits,
    bool even) {
  if (even) {
    output.copy_(input);
    return;
  }
  const auto in_rows = input.size(0);
  int64_t out_off = 0;
  for (size_t j = 0; j < out_splits.size(); ++j) {
    int64_t remaining = out_splits[j];
    TORCH_CHECK(
        remaining == 0 || in_rows > 0,
        cat("fakepg all_to_all_single: the input is empty but "
            "output_split_sizes[",
            j,
            "] > 0"));
    int64_t dst = out_off;
    while (remaining > 0) {
      const auto chunk = std::min(remaining, in_rows);
      output.narrow(0, dst, chunk).copy_(input.narrow(0, 0, chunk));
      dst += chunk;
      remaining -= chunk;
    }
    out_off += out_splits[j];
  }
}

}  // namespace fakepg
