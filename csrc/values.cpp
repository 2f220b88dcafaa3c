#include "values.hpp"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>

#include "compat.hpp"
#include "semantics.hpp"
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
          // ATen's vector type: fixed-width blocks the compiler vectorizes
          // whatever the build's flags, then the tail one by one.
          using Vec = at::vec::Vectorized<scalar_t>;
          auto* p = t.data_ptr<scalar_t>();
          const auto f = static_cast<scalar_t>(factor);
          const Vec fv(f);
          const int64_t n = t.numel();
          int64_t i = 0;
          for (; i + Vec::size() <= n; i += Vec::size()) {
            (Vec::loadu(p + i) * fv).store(p + i);
          }
          for (; i < n; ++i) {
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
// Peer j sends this rank the chunk of its input meant for this rank. Every
// rank holds the same input; its split sizes are one of two kinds a uniform
// world can have:
// - the same on every rank (an even exchange, EP's balanced dispatch): peer
//   j's chunk for this rank is this rank's own chunk number `rank`, so every
//   output split equals input_split_sizes[rank];
// - this rank's, shifted by the peer's distance (a ring exchange:
//   torch.distributed._functional_collectives.permute_tensor, context
//   parallel's rotation): peer j sends this rank what this rank sends the
//   rank as far away on the other side, its chunk number (2 * rank - j) mod n.
// The first is taken when both fit (every split equal). Split sizes of
// neither kind are refused rather than approximated (the backend checks
// before calling this).
bool sameSplits(const Contribution& c, int rank) {
  for (int j = 0; j < c.size; ++j) {
    if (c.splitRows(false, j) != c.splitRows(true, rank)) {
      return false;
    }
  }
  return true;
}

int across(int rank, int j, int n) {
  return ((2 * rank - j) % n + n) % n;
}

void allToAllUniform(const Contribution& c, int rank) {
  const auto& input = c.in[0];
  const auto& output = c.out[0];
  const auto row = input.dim() ? input.numel() / std::max<int64_t>(input.size(0), 1) : 1;
  if (sameSplits(c, rank)) {
    int64_t rows = 0;
    for (int j = 0; j < rank; ++j) {
      rows += c.splitRows(true, j);
    }
    fillChunks(output, input, c.size, rows * row);
    return;
  }
  std::vector<int64_t> starts(c.size + 1, 0);  // a ring exchange: each chunk's offset
  for (int j = 0; j < c.size; ++j) {
    starts[j + 1] = starts[j] + c.splitRows(true, j) * row;
  }
  const auto in_flat = flat(input);
  auto out_flat = output.is_contiguous() ? output.view(-1) : at::empty({output.numel()}, output.options());
  int64_t at = 0;
  for (int j = 0; j < c.size; ++j) {
    const int k = across(rank, j, c.size);
    const auto n = starts[k + 1] - starts[k];
    out_flat.narrow(0, at, n).copy_(in_flat.narrow(0, starts[k], n));
    at += n;
  }
  if (!output.is_contiguous()) {
    output.copy_(out_flat.view(output.sizes()));
  }
}

void allToAllCopy(const Contribution& c) {
  const auto& input = c.in[0];
  const auto& output = c.out[0];
  if (c.evenSplits()) {
    output.copy_(input);
    return;
  }
  const auto in_rows = input.size(0);
  int64_t out_off = 0;
  for (int j = 0; j < c.size; ++j) {
    int64_t remaining = c.splitRows(false, j);
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
    out_off += c.splitRows(false, j);
  }
}

// ---------------------------------------------------------------------------
// FakeWork

FakeWork::FakeWork(
    int rank,
    c10d::OpType type,
    std::vector<at::Tensor> outputs,
    std::exception_ptr error,
    int source_rank)
    : c10d::Work(rank, type),
      outputs_(std::move(outputs)),
      source_rank_(source_rank) {
  // See NOTE [compat: completed Work].
  completed_ = true;
  exception_ = std::move(error);
}

int FakeWork::sourceRank() const {
  TORCH_CHECK(
      source_rank_ >= 0,
      "sourceRank() may only be called on work objects that correspond to a "
      "recv-from-any call");
  return source_rank_;
}

bool FakeWork::wait(std::chrono::milliseconds /* timeout */) {
  if (exception_) {
    std::rethrow_exception(exception_);
  }
  return true;
}

c10::intrusive_ptr<c10::ivalue::Future> FakeWork::getFuture() {
  return completedFuture(outputs_, exception_);
}

// ---------------------------------------------------------------------------
// Local semantics: one function per op, writing this member's outputs.

namespace {

struct Local {
  bool uniform;
  int rank;
  int size;
};

using LocalOp = void (*)(Contribution& c, const Local& v);

void nothing(Contribution& /* c */, const Local& /* v */) {}

void allReduce(Contribution& c, const Local& v) {
  for (auto& t : c.out) {  // the inputs, reduced in place
    if (v.uniform && t.layout() == at::kStrided) {  // sparse: left as it is
      reduceUniform(t, c.reduce, v.size);
    }
  }
}

void reduce(Contribution& c, const Local& v) {
  // Only the root's result is defined; other ranks keep their input.
  if (v.uniform && v.rank == c.root) {
    reduceUniform(c.out[0], c.reduce, v.size);
  }
}

// Every output of a gather (of each input, outputs laid out [j * inputs +
// k]) is this member's input: every rank holds this rank's data (uniform),
// or each chunk is this rank's input (copy), the same bytes either way.
void allGather(Contribution& c, const Local& /* v */) {
  const size_t per = c.in.size();
  for (size_t i = 0; i < c.out.size(); ++i) {
    copyFlat(c.out[i], c.in[i % per]);
  }
}

void allGatherIntoTensor(Contribution& c, const Local& v) {
  for (size_t k = 0; k < c.out.size(); ++k) {
    fillChunks(c.out[k], c.in[k], v.size);
  }
}

// NOTE [Data this rank cannot know]
// On a non-root rank, scatter's data comes from the root's input list, which
// does not exist in this process; likewise recv's data comes from a peer.
// Those buffers are left exactly as they were (never uninitialised memory
// the backend wrote): tests should fill them with a sentinel if they care.
void scatter(Contribution& c, const Local& v) {
  if (v.rank == c.root) {
    copyFlat(c.out[0], c.in[v.rank]);
  }
}

// in is laid out [k * n + r]: input list k, chunk for rank r.
void reduceScatter(Contribution& c, const Local& v) {
  for (size_t k = 0; k < c.out.size(); ++k) {
    reduceScatterChunk(
        c.out[k], c.in[k * v.size + v.rank], 0, c.reduce, v.size, v.uniform);
  }
}

void reduceScatterTensor(Contribution& c, const Local& v) {
  for (size_t k = 0; k < c.out.size(); ++k) {
    reduceScatterChunk(c.out[k], c.in[k], v.rank, c.reduce, v.size, v.uniform);
  }
}

void allToAllSingle(Contribution& c, const Local& v) {
  if (v.uniform) {
    allToAllUniform(c, v.rank);
  } else {
    allToAllCopy(c);
  }
}

void allToAll(Contribution& c, const Local& v) {
  const bool same = v.uniform && std::all_of(c.out.begin(), c.out.end(), [&](const at::Tensor& o) {
    return o.sizes() == c.in[v.rank].sizes();
  });
  for (int j = 0; j < v.size; ++j) {
    const int k = !v.uniform ? j : same ? v.rank : across(v.rank, j, v.size);
    copyFlat(c.out[j], c.in[k]);
  }
}

LocalOp localOp(Op op) {
  switch (op) {
    case Op::all_reduce:
    case Op::all_reduce_coalesced:
      return allReduce;
    case Op::reduce:
      return reduce;
    case Op::all_gather:
    case Op::all_gather_coalesced:
    case Op::gather:
      return allGather;  // gather: the root's outputs; none elsewhere
    case Op::all_gather_into_tensor:
    case Op::all_gather_into_tensor_coalesced:
    case Op::gather_into_tensor:
      return allGatherIntoTensor;
    case Op::scatter:
      return scatter;
    case Op::reduce_scatter:
      return reduceScatter;
    case Op::reduce_scatter_tensor:
    case Op::reduce_scatter_tensor_coalesced:
      return reduceScatterTensor;
    case Op::all_to_all_single:
      return allToAllSingle;
    case Op::all_to_all:
      return allToAll;
    case Op::broadcast:  // every rank already holds the root's data (uniform)
    case Op::send:       // or keeps its own (copy): nothing to write
    case Op::recv:       // NOTE [Data this rank cannot know]
    case Op::barrier:
    case Op::kCount:
      break;
  }
  return nothing;
}

// NOTE [Meta tensors have no values]
// A world with tensors="fake" issues each collective on meta tensors of the
// caller's shapes (pytest_fakepg/fake/collectives.py): it is checked, counted,
// recorded and failed like any other, and there is nothing to compute.
bool shapesOnly(const Contribution& c) {
  const auto meta = [](const at::Tensor& t) { return t.is_meta(); };
  return std::any_of(c.in.begin(), c.in.end(), meta) ||
      std::any_of(c.out.begin(), c.out.end(), meta);
}

class LocalSemantics final : public Semantics {
 public:
  LocalSemantics(bool uniform, int rank, int size) : v_{uniform, rank, size} {}

  // NOTE [all_to_all under uniform values]: split sizes no uniform world
  // could have are refused rather than approximated.
  void check(const Contribution& c) const override {
    if (!v_.uniform) {
      return;
    }
    const int me = v_.rank;
    const auto across = [&](int j) { return fakepg::across(me, j, v_.size); };
    // The first output j that input chunk `from` does not fit, reading the
    // splits as the same on every rank or (`shifted`) as a ring's; -1: none.
    const auto mismatch = [&](const auto& fits, bool shifted) {
      for (int j = 0; j < v_.size; ++j) {
        if (!fits(j, shifted ? across(j) : me)) {
          return j;
        }
      }
      return -1;
    };
    if (c.op == Op::all_to_all_single) {
      const auto fits = [&](int j, int from) {
        return c.splitRows(false, j) == c.splitRows(true, from);
      };
      const int j = mismatch(fits, false);
      const int k = j < 0 ? -1 : mismatch(fits, true);
      TORCH_CHECK(
          k < 0,
          cat("fakepg all_to_all_single: output_split_sizes[",
              j,
              "] is ",
              c.splitRows(false, j),
              " but in a uniform world every rank sends this rank (",
              me,
              ") input_split_sizes[",
              me,
              "] = ",
              c.splitRows(true, me),
              " (the same splits on every rank) or, in a ring exchange, "
              "output_split_sizes[",
              k,
              "] = input_split_sizes[",
              across(k),
              "] = ",
              c.splitRows(true, across(k)),
              " (every rank's splits this rank's, shifted); use values='exact' "
              "or 'copy' for other splits"));
    } else if (c.op == Op::all_to_all) {
      const auto fits = [&](int j, int from) {
        return c.out[j].sizes() == c.in[from].sizes();
      };
      const int j = mismatch(fits, false);
      const int k = j < 0 ? -1 : mismatch(fits, true);
      TORCH_CHECK(
          k < 0,
          cat("fakepg all_to_all: output[",
              j,
              "] has shape ",
              c.out[j].sizes(),
              " but in a uniform world every rank sends this rank (",
              me,
              ") a tensor shaped like input[",
              me,
              "] ",
              c.in[me].sizes(),
              " (the same on every rank), or, in a ring exchange, output[",
              k,
              "] shaped like input[",
              across(k),
              "] ",
              c.in[across(k)].sizes()));
    }
  }

  // NOTE [recv from any source]
  // Some peer must be the sender. We pick the lowest group rank other than
  // this one (rank 1 for rank 0; itself in a group of one), record it as the
  // peer and report it through the work's sourceRank(), which is what
  // torch.distributed.recv(src=None) returns.
  int anySource() const override {
    return v_.size == 1 ? 0 : (v_.rank == 0 ? 1 : 0);
  }

  // NOTE [Writing outputs]
  // Real backends write outputs from kernels autograd never sees, so every
  // write runs under AutoDispatchBelowAutograd (outputs may be views of
  // tensors that require grad). An output is written only when the call
  // succeeds: a fault deferred to wait() leaves the buffers as they were, as
  // a failed communication would.
  c10::intrusive_ptr<c10d::Work> issue(
      Contribution c,
      c10d::OpType type,
      Results results,
      std::exception_ptr fault) override {
    if (!fault && !shapesOnly(c)) {
      at::AutoDispatchBelowAutograd guard;
      localOp(c.op)(c, v_);
    }
    const int source = type == c10d::OpType::RECVANYSOURCE ? c.peer : -1;
    return c10::make_intrusive<FakeWork>(
        v_.rank,
        type,
        results ? std::move(*results) : std::move(c.out),
        std::move(fault),
        source);
  }

  // Every coalesced op already ran (and was recorded) when it was issued.
  void startCoalescing() override {}
  c10::intrusive_ptr<c10d::Work> endCoalescing() override {
    return c10::make_intrusive<FakeWork>(
        v_.rank, c10d::OpType::COALESCED, std::vector<at::Tensor>{}, nullptr);
  }

 private:
  Local v_;
};

}  // namespace

std::unique_ptr<Semantics> localSemantics(bool uniform, int rank, int size) {
  return std::make_unique<LocalSemantics>(uniform, rank, size);
}

}  // namespace fakepg
