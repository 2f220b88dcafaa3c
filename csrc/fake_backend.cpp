#include "fake_backend.hpp"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>

namespace fakepg {

namespace {

constexpr const char* kOpNames[kNumOps] = {
    "all_reduce",
    "all_reduce_coalesced",
    "all_gather",
    "all_gather_into_tensor",
    "all_gather_coalesced",
    "all_gather_into_tensor_coalesced",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "reduce_scatter_tensor_coalesced",
    "all_to_all",
    "all_to_all_single",
    "broadcast",
    "reduce",
    "gather",
    "scatter",
    "send",
    "recv",
    "barrier",
};

std::exception_ptr makeDistBackendError(const std::string& msg) {
  try {
    C10_THROW_ERROR(DistBackendError, msg);
  } catch (...) {
    return std::current_exception();
  }
}

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

// dst[0 : src.numel()) = src, both flat.
void copyFlat(const at::Tensor& dst, const at::Tensor& src) {
  if (plainPair(dst, src) && dst.numel() == src.numel()) {
    std::memmove(dst.data_ptr(), src.data_ptr(), src.nbytes());
  } else {
    dst.copy_(src.reshape(dst.sizes()));
  }
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

// NOTE [Uniform values]
// In a `uniform` world every rank is taken to hold exactly the data this rank
// holds. A collective then has a result that one rank can compute alone:
// reducing n equal values x gives n*x for SUM, x for AVG/MIN/MAX/BAND/BOR,
// x^n for PRODUCT, x or 0 for BXOR (odd or even n) and f*n*x for PREMUL_SUM.
// The reduction happens in place on `t`.
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
      // torch 2.11 names it NCCLPreMulSumSupplement; later releases keep
      // that name as an alias of PreMulSumSupplement.
      auto* sup =
          dynamic_cast<c10d::NCCLPreMulSumSupplement*>(op.supplement_.get());
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

int64_t bytesOf(const std::vector<at::Tensor>& ts) {
  int64_t b = 0;
  for (const auto& t : ts) {
    b += static_cast<int64_t>(t.numel()) * t.element_size();
  }
  return b;
}

// A flat 1-D view when possible (no copy for contiguous tensors).
at::Tensor flat(const at::Tensor& t) {
  return t.reshape({-1});
}

void checkNumel(
    const char* op,
    const at::Tensor& big,
    const at::Tensor& small,
    int64_t n,
    const char* big_name,
    const char* small_name) {
  TORCH_CHECK(
      big.numel() == small.numel() * n,
      cat("fakepg ",
          op,
          ": ",
          big_name,
          " has ",
          big.numel(),
          " elements but must have ",
          small_name,
          ".numel() * group size = ",
          small.numel(),
          " * ",
          n,
          " = ",
          small.numel() * n));
}

// Fill every one of `n` equal chunks of `out` with `in`, in one kernel.
void fillChunks(const at::Tensor& out, const at::Tensor& in, int64_t n) {
  if (out.numel() == 0) {
    return;
  }
  if (plainPair(out, in)) {
    auto* dst = static_cast<char*>(out.data_ptr());
    const auto* src = static_cast<const char*>(in.data_ptr());
    const auto bytes = in.nbytes();
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(dst + i * bytes, src, bytes);
    }
  } else if (out.is_contiguous()) {
    out.view({n, -1}).copy_(in.reshape({1, -1}));
  } else {
    for (auto& c : flat(out).chunk(n)) {
      c.copy_(flat(in));
    }
  }
}

// NOTE [One-tensor coalesced calls]
// torch's functional collectives (and so DTensor) issue a single all_gather or
// reduce_scatter as a coalesced call of one tensor. A user thinks of that as
// the plain op, so it is recorded, counted and matched against faults under
// the plain op's name; only calls of two or more tensors are "_coalesced".
Op coalescedOr(Op plain, Op coalesced, size_t ntensors) {
  return ntensors == 1 ? plain : coalesced;
}

uint8_t redOf(const c10d::ReduceOp& op) {
  return static_cast<uint8_t>(op.op_);
}

}  // namespace

const char* opName(Op op) {
  return kOpNames[static_cast<int>(op)];
}

// ---------------------------------------------------------------------------
// WorldState

int WorldState::addGroup(GroupInfo info) {
  groups_.push_back(std::move(info));
  return static_cast<int>(groups_.size() - 1);
}

int64_t WorldState::armFault(int op, int64_t nth, FailAt at) {
  TORCH_CHECK(op >= -1 && op < kNumOps, cat("fakepg: no op with code ", op));
  TORCH_CHECK(nth >= 0, cat("fakepg: nth must be >= 0, got ", nth));
  faults_.push_back(Fault{next_fault_id_, op, nth, at});
  return next_fault_id_++;
}

bool WorldState::disarmFault(int64_t id) {
  auto it = std::find_if(faults_.begin(), faults_.end(), [id](const Fault& f) {
    return f.id == id;
  });
  if (it == faults_.end()) {
    return false;
  }
  faults_.erase(it);
  return true;
}

std::exception_ptr WorldState::begin(
    Op op,
    int group,
    const std::vector<at::Tensor>& inputs,
    uint8_t reduce_op,
    int32_t peer) {
  const int code = static_cast<int>(op);
  const int64_t nth_of_op = ++calls_[code];
  const int64_t nth_overall = ++total_calls_;

  const Fault* fired = nullptr;
  for (const auto& f : faults_) {
    if (f.op != -1 && f.op != code) {
      continue;
    }
    const int64_t n = f.op == -1 ? nth_overall : nth_of_op;
    if (f.nth == 0 || f.nth == n) {
      fired = &f;
      break;
    }
  }

  if (record_) {
    Record r{};
    r.op = op;
    r.reduce_op = reduce_op;
    r.dtype = inputs.empty() ? int8_t(-1)
                             : static_cast<int8_t>(inputs[0].scalar_type());
    r.failed = fired ? 1 : 0;
    r.group = group;
    r.peer = peer;
    r.ntensors = static_cast<uint32_t>(inputs.size());
    r.shape_offset = shapes_.size();
    r.bytes = bytesOf(inputs);
    for (const auto& t : inputs) {
      const auto sizes = t.sizes();
      shapes_.push_back(static_cast<int64_t>(sizes.size()));
      shapes_.insert(shapes_.end(), sizes.begin(), sizes.end());
    }
    records_.push_back(r);
  }

  if (!fired) {
    return nullptr;
  }
  const auto& g = groups_.at(group);
  auto error = makeDistBackendError(
      cat("fakepg: injected fault in ",
          kOpNames[code],
          " (call ",
          nth_of_op,
          " of ",
          kOpNames[code],
          " in this world, group '",
          g.name,
          "' of size ",
          g.size,
          ")"));
  const FailAt at = fired->at;
  if (fired->nth != 0) {
    // One-shot: the n-th call fails, later calls succeed.
    disarmFault(fired->id);
  }
  if (at == FailAt::issue) {
    std::rethrow_exception(error);
  }
  return error;
}

std::vector<int64_t> WorldState::shapesOf(const Record& r) const {
  auto first = shapes_.begin() + static_cast<std::ptrdiff_t>(r.shape_offset);
  auto last = first;
  for (uint32_t i = 0; i < r.ntensors; ++i) {
    last += 1 + *last;
  }
  return std::vector<int64_t>(first, last);
}

int64_t WorldState::count(int op) const {
  if (op < 0) {
    return static_cast<int64_t>(records_.size());
  }
  return std::count_if(records_.begin(), records_.end(), [op](const Record& r) {
    return static_cast<int>(r.op) == op;
  });
}

int64_t WorldState::totalBytes(int op) const {
  int64_t total = 0;
  for (const auto& r : records_) {
    if (op < 0 || static_cast<int>(r.op) == op) {
      total += r.bytes;
    }
  }
  return total;
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
  std::vector<c10::Device> devices;
  for (const auto& t : outputs_) {
    if (!t.is_cpu() && std::find(devices.begin(), devices.end(), t.device()) ==
                           devices.end()) {
      devices.push_back(t.device());
    }
  }
  auto fut = c10::make_intrusive<c10::ivalue::Future>(
      c10::ListType::create(c10::TensorType::get()), std::move(devices));
  if (exception_) {
    fut->setError(exception_);
  } else {
    fut->markCompleted(c10::IValue(outputs_));
  }
  return fut;
}

// ---------------------------------------------------------------------------
// FakeBackend

FakeBackend::FakeBackend(
    c10::intrusive_ptr<WorldState> world,
    int rank,
    int size,
    std::string group_name,
    std::vector<int64_t> global_ranks)
    : c10d::Backend(rank, size), world_(std::move(world)) {
  TORCH_CHECK(
      rank >= 0 && rank < size,
      cat("fakepg: rank ", rank, " is outside a group of size ", size));
  if (global_ranks.empty()) {
    // The default group: global ranks are the group ranks. Store nothing;
    // globalRank() maps identity. Keeps a million-rank world cheap.
    group_ = world_->addGroup(GroupInfo{std::move(group_name), rank, size, {}});
  } else {
    TORCH_CHECK(
        static_cast<int>(global_ranks.size()) == size,
        cat("fakepg: group of size ",
            size,
            " given ",
            global_ranks.size(),
            " global ranks"));
    global_ranks_ = global_ranks;
    group_ = world_->addGroup(
        GroupInfo{std::move(group_name), rank, size, std::move(global_ranks)});
  }
}

void FakeBackend::checkRoot(const char* op, int64_t root) const {
  TORCH_CHECK(
      root >= 0 && root < size_,
      cat("fakepg ",
          op,
          ": root ",
          root,
          " is outside a group of size ",
          size_));
}

int32_t FakeBackend::globalRank(int64_t group_rank) const {
  if (group_rank < 0) {
    return kNoPeer;
  }
  if (global_ranks_.empty()) {
    return static_cast<int32_t>(group_rank);
  }
  return static_cast<int32_t>(global_ranks_.at(group_rank));
}

std::exception_ptr FakeBackend::begin(
    Op op,
    const std::vector<at::Tensor>& inputs,
    uint8_t reduce_op,
    int32_t peer) {
  return world_->begin(op, group_, inputs, reduce_op, peer);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::done(
    c10d::OpType type,
    std::vector<at::Tensor> outputs,
    std::exception_ptr error) {
  return c10::make_intrusive<FakeWork>(
      rank_, type, std::move(outputs), std::move(error));
}

// NOTE [Writing outputs]
// Real backends write outputs from kernels autograd never sees, so every
// write below runs under AutoDispatchBelowAutograd (outputs may be views of
// tensors that require grad). An output is written only when the call
// succeeds: a fault deferred to wait() leaves the buffers as they were, as a
// failed communication would.

c10::intrusive_ptr<c10d::Work> FakeBackend::broadcast(
    std::vector<at::Tensor>& tensors, const c10d::BroadcastOptions& opts) {
  // Every rank already holds the root's data (uniform) or keeps its own
  // (copy): nothing to write either way.
  checkRoot("broadcast", opts.rootRank);
  auto err =
      begin(Op::broadcast, tensors, kNoReduceOp, globalRank(opts.rootRank));
  return done(c10d::OpType::BROADCAST, tensors, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::allreduce(
    std::vector<at::Tensor>& tensors, const c10d::AllreduceOptions& opts) {
  auto err = begin(Op::all_reduce, tensors, redOf(opts.reduceOp));
  if (!err && uniform()) {
    at::AutoDispatchBelowAutograd guard;
    for (auto& t : tensors) {
      reduceUniform(t, opts.reduceOp, size_);
    }
  }
  return done(c10d::OpType::ALLREDUCE, tensors, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::allreduce_sparse(
    std::vector<at::Tensor>& tensors, const c10d::AllreduceOptions& opts) {
  auto err = begin(Op::all_reduce, tensors, redOf(opts.reduceOp));
  return done(c10d::OpType::ALLREDUCE, tensors, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::allreduce_coalesced(
    std::vector<at::Tensor>& tensors,
    const c10d::AllreduceCoalescedOptions& opts) {
  auto err = begin(
      coalescedOr(Op::all_reduce, Op::all_reduce_coalesced, tensors.size()),
      tensors,
      redOf(opts.reduceOp));
  if (!err && uniform()) {
    at::AutoDispatchBelowAutograd guard;
    for (auto& t : tensors) {
      reduceUniform(t, opts.reduceOp, size_);
    }
  }
  return done(c10d::OpType::ALLREDUCE_COALESCED, tensors, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::reduce(
    std::vector<at::Tensor>& tensors, const c10d::ReduceOptions& opts) {
  checkRoot("reduce", opts.rootRank);
  auto err = begin(
      Op::reduce, tensors, redOf(opts.reduceOp), globalRank(opts.rootRank));
  if (!err && uniform() && rank_ == opts.rootRank) {
    // Only the root's result is defined; other ranks keep their input.
    at::AutoDispatchBelowAutograd guard;
    reduceUniform(tensors.at(opts.rootTensor), opts.reduceOp, size_);
  }
  return done(c10d::OpType::REDUCE, tensors, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::allgather(
    std::vector<std::vector<at::Tensor>>& outputs,
    std::vector<at::Tensor>& inputs,
    const c10d::AllgatherOptions& /* opts */) {
  TORCH_CHECK(
      inputs.size() == 1 && outputs.size() == 1,
      "fakepg all_gather: expects one input and one output list");
  TORCH_CHECK(
      static_cast<int>(outputs[0].size()) == size_,
      cat("fakepg all_gather: the output list has ",
          outputs[0].size(),
          " tensors but the group has ",
          size_,
          " ranks"));
  auto err = begin(Op::all_gather, inputs);
  if (!err) {
    at::AutoDispatchBelowAutograd guard;
    for (auto& t : outputs[0]) {
      copyFlat(t, inputs[0]);
    }
  }
  return done(c10d::OpType::ALLGATHER, outputs[0], err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::_allgather_base(
    at::Tensor& output,
    at::Tensor& input,
    const c10d::AllgatherOptions& /* opts */) {
  checkNumel("all_gather_into_tensor", output, input, size_, "output", "input");
  auto err = begin(Op::all_gather_into_tensor, {input});
  if (!err) {
    at::AutoDispatchBelowAutograd guard;
    fillChunks(output, input, size_);
  }
  return done(c10d::OpType::_ALLGATHER_BASE, {output}, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::allgather_coalesced(
    std::vector<std::vector<at::Tensor>>& outputs,
    std::vector<at::Tensor>& inputs,
    const c10d::AllgatherOptions& /* opts */) {
  TORCH_CHECK(
      static_cast<int>(outputs.size()) == size_,
      cat("fakepg all_gather_coalesced: expects one output list per rank (",
          size_,
          "), got ",
          outputs.size()));
  auto err = begin(Op::all_gather_coalesced, inputs);
  std::vector<at::Tensor> flat_outputs;
  if (!err) {
    at::AutoDispatchBelowAutograd guard;
    for (auto& list : outputs) {
      TORCH_CHECK(
          list.size() == inputs.size(),
          cat("fakepg all_gather_coalesced: each output list must have one "
              "tensor per input (",
              inputs.size(),
              "), got ",
              list.size()));
      for (size_t i = 0; i < inputs.size(); ++i) {
        copyFlat(list[i], inputs[i]);
        flat_outputs.push_back(list[i]);
      }
    }
  }
  return done(c10d::OpType::ALLGATHER_COALESCED, flat_outputs, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::allgather_into_tensor_coalesced(
    std::vector<at::Tensor>& outputs,
    std::vector<at::Tensor>& inputs,
    const c10d::AllgatherOptions& /* opts */) {
  TORCH_CHECK(
      outputs.size() == inputs.size(),
      cat("fakepg all_gather_into_tensor_coalesced: ",
          outputs.size(),
          " outputs for ",
          inputs.size(),
          " inputs"));
  for (size_t i = 0; i < outputs.size(); ++i) {
    checkNumel(
        "all_gather_into_tensor_coalesced",
        outputs[i],
        inputs[i],
        size_,
        "output",
        "input");
  }
  auto err = begin(
      coalescedOr(
          Op::all_gather_into_tensor,
          Op::all_gather_into_tensor_coalesced,
          inputs.size()),
      inputs);
  if (!err) {
    at::AutoDispatchBelowAutograd guard;
    for (size_t i = 0; i < outputs.size(); ++i) {
      fillChunks(outputs[i], inputs[i], size_);
    }
  }
  return done(c10d::OpType::COALESCED, outputs, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::gather(
    std::vector<std::vector<at::Tensor>>& outputs,
    std::vector<at::Tensor>& inputs,
    const c10d::GatherOptions& opts) {
  checkRoot("gather", opts.rootRank);
  TORCH_CHECK(inputs.size() == 1, "fakepg gather: expects one input tensor");
  const bool root = rank_ == opts.rootRank;
  if (root) {
    TORCH_CHECK(
        outputs.size() == 1 && static_cast<int>(outputs[0].size()) == size_,
        cat("fakepg gather: the root needs one output list of ",
            size_,
            " tensors"));
  }
  auto err = begin(Op::gather, inputs, kNoReduceOp, globalRank(opts.rootRank));
  std::vector<at::Tensor> outs;
  if (!err && root) {
    at::AutoDispatchBelowAutograd guard;
    for (auto& t : outputs[0]) {
      copyFlat(t, inputs[0]);
    }
    outs = outputs[0];
  }
  return done(c10d::OpType::GATHER, outs, err);
}

// NOTE [Data this rank cannot know]
// On a non-root rank, scatter's data comes from the root's input list, which
// does not exist in this process; likewise recv's data comes from a peer.
// Those buffers are left exactly as they were (never uninitialised memory
// the backend wrote): tests should fill them with a sentinel if they care.
c10::intrusive_ptr<c10d::Work> FakeBackend::scatter(
    std::vector<at::Tensor>& outputs,
    std::vector<std::vector<at::Tensor>>& inputs,
    const c10d::ScatterOptions& opts) {
  checkRoot("scatter", opts.rootRank);
  TORCH_CHECK(outputs.size() == 1, "fakepg scatter: expects one output tensor");
  const bool root = rank_ == opts.rootRank;
  if (root) {
    TORCH_CHECK(
        inputs.size() == 1 && static_cast<int>(inputs[0].size()) == size_,
        cat("fakepg scatter: the root needs one input list of ",
            size_,
            " tensors"));
  }
  auto err = begin(
      Op::scatter,
      root ? inputs[0] : outputs,
      kNoReduceOp,
      globalRank(opts.rootRank));
  if (!err && root) {
    at::AutoDispatchBelowAutograd guard;
    copyFlat(outputs[0], inputs[0][rank_]);
  }
  return done(c10d::OpType::SCATTER, outputs, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::reduce_scatter(
    std::vector<at::Tensor>& outputs,
    std::vector<std::vector<at::Tensor>>& inputs,
    const c10d::ReduceScatterOptions& opts) {
  TORCH_CHECK(
      outputs.size() == inputs.size(),
      cat("fakepg reduce_scatter: ",
          outputs.size(),
          " outputs for ",
          inputs.size(),
          " input lists"));
  for (const auto& list : inputs) {
    TORCH_CHECK(
        static_cast<int>(list.size()) == size_,
        cat("fakepg reduce_scatter: the input list has ",
            list.size(),
            " tensors but the group has ",
            size_,
            " ranks"));
  }
  std::vector<at::Tensor> recorded;
  for (const auto& list : inputs) {
    recorded.insert(recorded.end(), list.begin(), list.end());
  }
  auto err = begin(Op::reduce_scatter, recorded, redOf(opts.reduceOp));
  if (!err) {
    at::AutoDispatchBelowAutograd guard;
    for (size_t i = 0; i < outputs.size(); ++i) {
      copyFlat(outputs[i], inputs[i][rank_]);
      if (uniform()) {
        reduceUniform(outputs[i], opts.reduceOp, size_);
      }
    }
  }
  return done(c10d::OpType::REDUCE_SCATTER, outputs, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::_reduce_scatter_base(
    at::Tensor& output,
    at::Tensor& input,
    const c10d::ReduceScatterOptions& opts) {
  checkNumel("reduce_scatter_tensor", input, output, size_, "input", "output");
  auto err = begin(Op::reduce_scatter_tensor, {input}, redOf(opts.reduceOp));
  if (!err) {
    at::AutoDispatchBelowAutograd guard;
    const auto m = output.numel();
    if (plainPair(output, input)) {
      std::memmove(
          output.data_ptr(),
          static_cast<const char*>(input.data_ptr()) + rank_ * output.nbytes(),
          output.nbytes());
    } else {
      copyFlat(output, flat(input).narrow(0, rank_ * m, m));
    }
    if (uniform()) {
      reduceUniform(output, opts.reduceOp, size_);
    }
  }
  return done(c10d::OpType::_REDUCE_SCATTER_BASE, {output}, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::reduce_scatter_tensor_coalesced(
    std::vector<at::Tensor>& outputs,
    std::vector<at::Tensor>& inputs,
    const c10d::ReduceScatterOptions& opts) {
  TORCH_CHECK(
      outputs.size() == inputs.size(),
      cat("fakepg reduce_scatter_tensor_coalesced: ",
          outputs.size(),
          " outputs for ",
          inputs.size(),
          " inputs"));
  for (size_t i = 0; i < outputs.size(); ++i) {
    checkNumel(
        "reduce_scatter_tensor_coalesced",
        inputs[i],
        outputs[i],
        size_,
        "input",
        "output");
  }
  auto err = begin(
      coalescedOr(
          Op::reduce_scatter_tensor,
          Op::reduce_scatter_tensor_coalesced,
          inputs.size()),
      inputs,
      redOf(opts.reduceOp));
  if (!err) {
    at::AutoDispatchBelowAutograd guard;
    for (size_t i = 0; i < outputs.size(); ++i) {
      const auto m = outputs[i].numel();
      copyFlat(outputs[i], flat(inputs[i]).narrow(0, rank_ * m, m));
      if (uniform()) {
        reduceUniform(outputs[i], opts.reduceOp, size_);
      }
    }
  }
  return done(c10d::OpType::COALESCED, outputs, err);
}

// NOTE [all_to_all under uniform values]
// Peer j sends this rank the chunk of its input meant for this rank. With
// every rank holding the same input and the same split sizes, that chunk is
// this rank's own input chunk number `rank`, so output chunk j is input chunk
// `rank` for every j, and every output split must equal
// input_split_sizes[rank]. Anything else could not happen in a real uniform
// world and is rejected.
c10::intrusive_ptr<c10d::Work> FakeBackend::alltoall_base(
    at::Tensor& output,
    at::Tensor& input,
    std::vector<int64_t>& outputSplitSizes,
    std::vector<int64_t>& inputSplitSizes,
    const c10d::AllToAllOptions& /* opts */) {
  c10d::checkSplitSizes(inputSplitSizes, input, size_);
  c10d::checkSplitSizes(outputSplitSizes, output, size_);
  auto equalSplits = [this](const at::Tensor& t) {
    return std::vector<int64_t>(size_, t.dim() ? t.size(0) / size_ : 0);
  };
  const auto in_splits =
      inputSplitSizes.empty() ? equalSplits(input) : inputSplitSizes;
  const auto out_splits =
      outputSplitSizes.empty() ? equalSplits(output) : outputSplitSizes;
  if (uniform()) {
    for (int j = 0; j < size_; ++j) {
      TORCH_CHECK(
          out_splits[j] == in_splits[rank_],
          cat("fakepg all_to_all_single: output_split_sizes[",
              j,
              "] is ",
              out_splits[j],
              " but in a uniform world every rank sends this rank (",
              rank_,
              ") input_split_sizes[",
              rank_,
              "] = ",
              in_splits[rank_],
              " rows; use values='copy' for inconsistent splits"));
    }
  }
  auto err = begin(Op::all_to_all_single, {input});
  if (!err) {
    at::AutoDispatchBelowAutograd guard;
    if (uniform()) {
      int64_t in_off = 0;
      for (int j = 0; j < rank_; ++j) {
        in_off += in_splits[j];
      }
      // Every output split equals in_splits[rank_] (checked above), so the
      // output is this rank's chunk repeated once per peer.
      if (plainPair(output, input) && input.size(0) > 0) {
        const auto row = input.nbytes() / input.size(0);
        const auto* src =
            static_cast<const char*>(input.data_ptr()) + in_off * row;
        const auto bytes = in_splits[rank_] * row;
        auto* dst = static_cast<char*>(output.data_ptr());
        for (int j = 0; j < size_; ++j) {
          std::memcpy(dst + j * bytes, src, bytes);
        }
      } else {
        fillChunks(output, input.narrow(0, in_off, in_splits[rank_]), size_);
      }
    } else if (outputSplitSizes.empty() && inputSplitSizes.empty()) {
      output.copy_(input);
    } else {
      // torch's stock fake approximation: each output slot repeats the start
      // of the input. Deterministic but arbitrary values.
      const auto in_rows = input.size(0);
      int64_t out_off = 0;
      for (int j = 0; j < size_; ++j) {
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
  }
  return done(c10d::OpType::ALLTOALL_BASE, {output}, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::alltoall(
    std::vector<at::Tensor>& outputs,
    std::vector<at::Tensor>& inputs,
    const c10d::AllToAllOptions& /* opts */) {
  TORCH_CHECK(
      static_cast<int>(outputs.size()) == size_ &&
          static_cast<int>(inputs.size()) == size_,
      cat("fakepg all_to_all: needs ",
          size_,
          " input and output tensors, got ",
          inputs.size(),
          " and ",
          outputs.size()));
  if (uniform()) {
    for (int j = 0; j < size_; ++j) {
      TORCH_CHECK(
          outputs[j].sizes() == inputs[rank_].sizes(),
          cat("fakepg all_to_all: output[",
              j,
              "] has shape ",
              outputs[j].sizes(),
              " but in a uniform world every rank sends this rank (",
              rank_,
              ") a tensor shaped like input[",
              rank_,
              "] ",
              inputs[rank_].sizes()));
    }
  }
  auto err = begin(Op::all_to_all, inputs);
  if (!err) {
    at::AutoDispatchBelowAutograd guard;
    for (int j = 0; j < size_; ++j) {
      copyFlat(outputs[j], uniform() ? inputs[rank_] : inputs[j]);
    }
  }
  return done(c10d::OpType::ALLTOALL, outputs, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::send(
    std::vector<at::Tensor>& tensors, int dstRank, int /* tag */) {
  auto err = begin(Op::send, tensors, kNoReduceOp, globalRank(dstRank));
  return done(c10d::OpType::SEND, tensors, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::recv(
    std::vector<at::Tensor>& tensors, int srcRank, int /* tag */) {
  // See NOTE [Data this rank cannot know].
  auto err = begin(Op::recv, tensors, kNoReduceOp, globalRank(srcRank));
  return done(c10d::OpType::RECV, tensors, err);
}

// NOTE [recv from any source]
// Some peer must be the sender. We pick the lowest group rank other than
// this one (rank 1 for rank 0; itself in a group of one), record it as the
// peer and report it through the work's sourceRank(), which is what
// torch.distributed.recv(src=None) returns.
c10::intrusive_ptr<c10d::Work> FakeBackend::recvAnysource(
    std::vector<at::Tensor>& tensors, int /* tag */) {
  const int source = size_ == 1 ? 0 : (rank_ == 0 ? 1 : 0);
  auto err = begin(Op::recv, tensors, kNoReduceOp, globalRank(source));
  return c10::make_intrusive<FakeWork>(
      rank_, c10d::OpType::RECVANYSOURCE, tensors, err, source);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::barrier(
    const c10d::BarrierOptions& /* opts */) {
  auto err = begin(Op::barrier, {});
  return done(c10d::OpType::BARRIER, {}, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::endCoalescing() {
  // Every coalesced op already ran (and was recorded) when it was issued.
  return done(c10d::OpType::COALESCED, {}, nullptr);
}

}  // namespace fakepg
