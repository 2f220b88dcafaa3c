#include "backend.hpp"

#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/util/Exception.h>

#include <algorithm>

#include "compat.hpp"
#include "text.hpp"
#include "values.hpp"

namespace fakepg {

namespace {

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

void checkSameCount(
    const char* op,
    size_t outputs,
    size_t inputs,
    const char* what) {
  TORCH_CHECK(
      outputs == inputs,
      cat("fakepg ", op, ": ", outputs, " outputs for ", inputs, " ", what));
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
  TORCH_CHECK(
      global_ranks.empty() || static_cast<int>(global_ranks.size()) == size,
      cat("fakepg: group of size ",
          size,
          " given ",
          global_ranks.size(),
          " global ranks"));
  // An empty list is a group of every rank: global ranks are group ranks,
  // and a million-rank world stores none of them.
  global_ranks_ = global_ranks;
  if (world_->values() == Values::exact) {
    exchange_ = world_->exchange(group_name, global_ranks, size);
  }
  const int global_rank = global_ranks.empty()
      ? rank
      : static_cast<int>(global_ranks.at(rank));
  group_ = world_->addGroup(GroupInfo{
      std::move(group_name), rank, size, std::move(global_ranks), global_rank});
}

Contribution FakeBackend::part(
    Op op,
    std::vector<at::Tensor> in,
    std::vector<at::Tensor> out,
    const c10d::ReduceOp& reduce) const {
  for (const auto* list : {&in, &out}) {
    for (const auto& t : *list) {
      TORCH_CHECK(
          t.layout() == at::kStrided,
          cat("fakepg: sparse ",
              opName(op),
              " has no exact values yet; use dense tensors or "
              "values='uniform'"));
    }
  }
  Contribution c;
  c.op = op;
  c.rank = rank_;
  c.global_rank = globalRank(rank_);
  c.in = std::move(in);
  c.out = std::move(out);
  c.reduce = reduce;
  c.reduces = reduce.op_ != c10d::ReduceOp::UNUSED;
  return c;
}

c10::intrusive_ptr<ExactWork> FakeBackend::exactWork(
    Op op,
    c10d::OpType type,
    std::vector<at::Tensor> results,
    std::exception_ptr fault) {
  const auto& g = world_->group(group_);
  auto work = c10::make_intrusive<ExactWork>(
      world_->scheduler(),
      globalRank(rank_),
      type,
      std::move(results),
      cat(opName(op), "\x1f", g.name, "\x1f", world_->lastSite()),
      std::move(fault));
  if (coalescing_) {
    coalesced_.push_back(work);
  }
  return work;
}

c10::intrusive_ptr<c10d::Work> FakeBackend::post(
    Contribution c,
    c10d::OpType type,
    std::vector<at::Tensor> results,
    std::exception_ptr fault) {
  auto work = exactWork(c.op, type, std::move(results), std::move(fault));
  c.work = work;
  exchange_->post(++collectives_, std::move(c));
  return work;
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
    int32_t peer,
    bool any_source) {
  ++seq_;
  return world_->begin(op, group_, inputs, reduce_op, peer, any_source);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::done(
    c10d::OpType type,
    std::vector<at::Tensor> outputs,
    std::exception_ptr error) {
  return c10::make_intrusive<FakeWork>(
      rank_, type, std::move(outputs), std::move(error));
}

void FakeBackend::reduceAll(
    std::vector<at::Tensor>& tensors,
    const c10d::ReduceOp& op) {
  if (uniform()) {
    for (auto& t : tensors) {
      reduceUniform(t, op, size_);
    }
  }
}

// NOTE [Writing outputs]
// Real backends write outputs from kernels autograd never sees, so every
// write below runs under AutoDispatchBelowAutograd (outputs may be views of
// tensors that require grad). An output is written only when the call
// succeeds: a fault deferred to wait() leaves the buffers as they were, as a
// failed communication would.

c10::intrusive_ptr<c10d::Work> FakeBackend::broadcast(
    std::vector<at::Tensor>& tensors,
    const c10d::BroadcastOptions& opts) {
  // Every rank already holds the root's data (uniform) or keeps its own
  // (copy): nothing to write either way.
  checkRoot("broadcast", opts.rootRank);
  auto err =
      begin(Op::broadcast, tensors, kNoReduceOp, globalRank(opts.rootRank));
  if (exact()) {
    auto c = part(Op::broadcast, tensors, tensors);
    c.root = opts.rootRank;
    return post(std::move(c), c10d::OpType::BROADCAST, tensors, err);
  }
  return done(c10d::OpType::BROADCAST, tensors, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::allreduce(
    std::vector<at::Tensor>& tensors,
    const c10d::AllreduceOptions& opts) {
  auto err = begin(Op::all_reduce, tensors, redOf(opts.reduceOp));
  if (exact()) {
    auto c = part(Op::all_reduce, tensors, tensors, opts.reduceOp);
    return post(std::move(c), c10d::OpType::ALLREDUCE, tensors, err);
  }
  if (!err) {
    at::AutoDispatchBelowAutograd guard;
    reduceAll(tensors, opts.reduceOp);
  }
  return done(c10d::OpType::ALLREDUCE, tensors, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::allreduce_sparse(
    std::vector<at::Tensor>& tensors,
    const c10d::AllreduceOptions& opts) {
  TORCH_CHECK(
      !exact(),
      "fakepg: sparse all_reduce has no exact values yet; use dense tensors "
      "or values='uniform'");
  auto err = begin(Op::all_reduce, tensors, redOf(opts.reduceOp));
  return done(c10d::OpType::ALLREDUCE, tensors, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::allreduce_coalesced(
    std::vector<at::Tensor>& tensors,
    const c10d::AllreduceCoalescedOptions& opts) {
  const auto op =
      coalescedOr(Op::all_reduce, Op::all_reduce_coalesced, tensors.size());
  auto err = begin(op, tensors, redOf(opts.reduceOp));
  if (exact()) {
    auto c = part(op, tensors, tensors, opts.reduceOp);
    return post(std::move(c), c10d::OpType::ALLREDUCE_COALESCED, tensors, err);
  }
  if (!err) {
    at::AutoDispatchBelowAutograd guard;
    reduceAll(tensors, opts.reduceOp);
  }
  return done(c10d::OpType::ALLREDUCE_COALESCED, tensors, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::reduce(
    std::vector<at::Tensor>& tensors,
    const c10d::ReduceOptions& opts) {
  checkRoot("reduce", opts.rootRank);
  auto err = begin(
      Op::reduce, tensors, redOf(opts.reduceOp), globalRank(opts.rootRank));
  if (exact()) {
    const auto& t = tensors.at(opts.rootTensor);
    auto c = part(Op::reduce, {t}, {t}, opts.reduceOp);
    c.root = opts.rootRank;
    return post(std::move(c), c10d::OpType::REDUCE, tensors, err);
  }
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
  if (exact()) {
    return post(
        part(Op::all_gather, inputs, outputs[0]),
        c10d::OpType::ALLGATHER,
        outputs[0],
        err);
  }
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
  if (exact()) {
    return post(
        part(Op::all_gather_into_tensor, {input}, {output}),
        c10d::OpType::_ALLGATHER_BASE,
        {output},
        err);
  }
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
  for (const auto& list : outputs) {
    TORCH_CHECK(
        list.size() == inputs.size(),
        cat("fakepg all_gather_coalesced: each output list must have one "
            "tensor per input (",
            inputs.size(),
            "), got ",
            list.size()));
  }
  auto err = begin(Op::all_gather_coalesced, inputs);
  if (exact()) {
    std::vector<at::Tensor> outs;
    for (auto& list : outputs) {
      outs.insert(outs.end(), list.begin(), list.end());
    }
    return post(
        part(Op::all_gather_coalesced, inputs, outs),
        c10d::OpType::ALLGATHER_COALESCED,
        outs,
        err);
  }
  std::vector<at::Tensor> flat_outputs;
  if (!err) {
    at::AutoDispatchBelowAutograd guard;
    for (auto& list : outputs) {
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
  const char* name = "all_gather_into_tensor_coalesced";
  checkSameCount(name, outputs.size(), inputs.size(), "inputs");
  for (size_t i = 0; i < outputs.size(); ++i) {
    checkNumel(name, outputs[i], inputs[i], size_, "output", "input");
  }
  const auto op = coalescedOr(
      Op::all_gather_into_tensor,
      Op::all_gather_into_tensor_coalesced,
      inputs.size());
  auto err = begin(op, inputs);
  if (exact()) {
    return post(part(op, inputs, outputs), c10d::OpType::COALESCED, outputs, err);
  }
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
  if (exact()) {
    auto outs = root ? outputs[0] : std::vector<at::Tensor>{};
    auto c = part(Op::gather, inputs, outs);
    c.root = opts.rootRank;
    return post(std::move(c), c10d::OpType::GATHER, outs, err);
  }
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

c10::intrusive_ptr<c10d::Work> FakeBackend::gatherIntoTensor(
    at::Tensor& output,
    at::Tensor& input,
    const c10d::GatherOptions& opts) {
  checkRoot("gather_into_tensor", opts.rootRank);
  const bool root = rank_ == opts.rootRank;
  if (root) {
    checkNumel("gather_into_tensor", output, input, size_, "output", "input");
  }
  auto err = begin(
      Op::gather_into_tensor, {input}, kNoReduceOp, globalRank(opts.rootRank));
  std::vector<at::Tensor> outs;
  if (root) {
    outs.push_back(output);
  }
  if (exact()) {
    auto c = part(Op::gather_into_tensor, {input}, outs);
    c.root = opts.rootRank;
    return post(std::move(c), c10d::OpType::GATHER, outs, err);
  }
  if (!err && root) {
    // Every rank holds this rank's data (uniform), or each chunk is this
    // rank's input (copy): the same bytes either way.
    at::AutoDispatchBelowAutograd guard;
    fillChunks(output, input, size_);
  }
  return done(c10d::OpType::GATHER, err ? std::vector<at::Tensor>{} : outs, err);
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
  if (exact()) {
    auto c = part(
        Op::scatter, root ? inputs[0] : std::vector<at::Tensor>{}, outputs);
    c.root = opts.rootRank;
    return post(std::move(c), c10d::OpType::SCATTER, outputs, err);
  }
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
  checkSameCount("reduce_scatter", outputs.size(), inputs.size(), "input lists");
  std::vector<at::Tensor> recorded;
  for (const auto& list : inputs) {
    TORCH_CHECK(
        static_cast<int>(list.size()) == size_,
        cat("fakepg reduce_scatter: the input list has ",
            list.size(),
            " tensors but the group has ",
            size_,
            " ranks"));
    recorded.insert(recorded.end(), list.begin(), list.end());
  }
  auto err = begin(Op::reduce_scatter, recorded, redOf(opts.reduceOp));
  if (exact()) {
    auto c = part(Op::reduce_scatter, recorded, outputs, opts.reduceOp);
    return post(std::move(c), c10d::OpType::REDUCE_SCATTER, outputs, err);
  }
  if (!err) {
    at::AutoDispatchBelowAutograd guard;
    for (size_t i = 0; i < outputs.size(); ++i) {
      reduceScatterChunk(
          outputs[i], inputs[i][rank_], 0, opts.reduceOp, size_, uniform());
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
  if (exact()) {
    auto c = part(Op::reduce_scatter_tensor, {input}, {output}, opts.reduceOp);
    return post(
        std::move(c), c10d::OpType::_REDUCE_SCATTER_BASE, {output}, err);
  }
  if (!err) {
    at::AutoDispatchBelowAutograd guard;
    reduceScatterChunk(output, input, rank_, opts.reduceOp, size_, uniform());
  }
  return done(c10d::OpType::_REDUCE_SCATTER_BASE, {output}, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::reduce_scatter_tensor_coalesced(
    std::vector<at::Tensor>& outputs,
    std::vector<at::Tensor>& inputs,
    const c10d::ReduceScatterOptions& opts) {
  const char* name = "reduce_scatter_tensor_coalesced";
  checkSameCount(name, outputs.size(), inputs.size(), "inputs");
  for (size_t i = 0; i < outputs.size(); ++i) {
    checkNumel(name, inputs[i], outputs[i], size_, "input", "output");
  }
  const auto op = coalescedOr(
      Op::reduce_scatter_tensor,
      Op::reduce_scatter_tensor_coalesced,
      inputs.size());
  auto err = begin(op, inputs, redOf(opts.reduceOp));
  if (exact()) {
    auto c = part(op, inputs, outputs, opts.reduceOp);
    return post(std::move(c), c10d::OpType::COALESCED, outputs, err);
  }
  if (!err) {
    at::AutoDispatchBelowAutograd guard;
    for (size_t i = 0; i < outputs.size(); ++i) {
      reduceScatterChunk(
          outputs[i], inputs[i], rank_, opts.reduceOp, size_, uniform());
    }
  }
  return done(c10d::OpType::COALESCED, outputs, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::alltoall_base(
    at::Tensor& output,
    at::Tensor& input,
    std::vector<int64_t>& outputSplitSizes,
    std::vector<int64_t>& inputSplitSizes,
    const c10d::AllToAllOptions& /* opts */) {
  compat::checkSplitSizes(inputSplitSizes, input, size_);
  compat::checkSplitSizes(outputSplitSizes, output, size_);
  auto equalSplits = [this](const at::Tensor& t) {
    return std::vector<int64_t>(size_, t.dim() ? t.size(0) / size_ : 0);
  };
  const auto in_splits =
      inputSplitSizes.empty() ? equalSplits(input) : inputSplitSizes;
  const auto out_splits =
      outputSplitSizes.empty() ? equalSplits(output) : outputSplitSizes;
  if (exact()) {
    auto err = begin(Op::all_to_all_single, {input});
    auto c = part(Op::all_to_all_single, {input}, {output});
    c.in_splits = in_splits;
    c.out_splits = out_splits;
    return post(std::move(c), c10d::OpType::ALLTOALL_BASE, {output}, err);
  }
  if (uniform()) {
    // See NOTE [all_to_all under uniform values].
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
      allToAllUniform(output, input, in_splits, rank_, size_);
    } else {
      allToAllCopy(
          output,
          input,
          out_splits,
          outputSplitSizes.empty() && inputSplitSizes.empty());
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
  if (exact()) {
    return post(
        part(Op::all_to_all, inputs, outputs),
        c10d::OpType::ALLTOALL,
        outputs,
        err);
  }
  if (!err) {
    at::AutoDispatchBelowAutograd guard;
    for (int j = 0; j < size_; ++j) {
      copyFlat(outputs[j], uniform() ? inputs[rank_] : inputs[j]);
    }
  }
  return done(c10d::OpType::ALLTOALL, outputs, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::send(
    std::vector<at::Tensor>& tensors,
    int dstRank,
    int tag) {
  auto err = begin(Op::send, tensors, kNoReduceOp, globalRank(dstRank));
  if (exact()) {
    auto c = part(Op::send, tensors, {});
    c.tag = tag;
    auto work = exactWork(Op::send, c10d::OpType::SEND, tensors, err);
    c.work = work;
    exchange_->send(std::move(c), dstRank);
    return work;
  }
  return done(c10d::OpType::SEND, tensors, err);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::recv(
    std::vector<at::Tensor>& tensors,
    int srcRank,
    int tag) {
  // See NOTE [Data this rank cannot know].
  auto err = begin(Op::recv, tensors, kNoReduceOp, globalRank(srcRank));
  if (exact()) {
    return exactRecv(tensors, srcRank, tag, c10d::OpType::RECV, err);
  }
  return done(c10d::OpType::RECV, tensors, err);
}

// NOTE [recv from any source]
// Some peer must be the sender. We pick the lowest group rank other than
// this one (rank 1 for rank 0; itself in a group of one), record it as the
// peer and report it through the work's sourceRank(), which is what
// torch.distributed.recv(src=None) returns.
c10::intrusive_ptr<c10d::Work> FakeBackend::exactRecv(
    std::vector<at::Tensor>& tensors,
    int srcRank,
    int tag,
    c10d::OpType type,
    std::exception_ptr err) {
  auto c = part(Op::recv, {}, tensors);
  c.tag = tag;
  auto work = exactWork(Op::recv, type, tensors, err);
  c.work = work;
  exchange_->recv(std::move(c), srcRank);
  return work;
}

c10::intrusive_ptr<c10d::Work> FakeBackend::recvAnysource(
    std::vector<at::Tensor>& tensors,
    int tag) {
  if (exact()) {
    auto err = begin(Op::recv, tensors, kNoReduceOp, kNoPeer, true);
    return exactRecv(tensors, -1, tag, c10d::OpType::RECVANYSOURCE, err);
  }
  const int source = size_ == 1 ? 0 : (rank_ == 0 ? 1 : 0);
  auto err =
      begin(Op::recv, tensors, kNoReduceOp, globalRank(source), true);
  return c10::make_intrusive<FakeWork>(
      rank_, c10d::OpType::RECVANYSOURCE, tensors, err, source);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::barrier(
    const c10d::BarrierOptions& /* opts */) {
  auto err = begin(Op::barrier, {});
  if (exact()) {
    return post(part(Op::barrier, {}, {}), c10d::OpType::BARRIER, {}, err);
  }
  return done(c10d::OpType::BARRIER, {}, err);
}

void FakeBackend::startCoalescing() {
  coalescing_ = true;
  coalesced_.clear();
}

c10::intrusive_ptr<c10d::Work> FakeBackend::endCoalescing() {
  coalescing_ = false;
  if (exact()) {
    // Complete when every op issued since startCoalescing() is.
    auto work = c10::make_intrusive<ExactWork>(
        world_->scheduler(),
        globalRank(rank_),
        c10d::OpType::COALESCED,
        std::vector<at::Tensor>{},
        std::string(),
        nullptr);
    work->finish(nullptr);
    for (auto& part : coalesced_) {
      work->addPart(std::move(part));
    }
    coalesced_.clear();
    return work;
  }
  // Every coalesced op already ran (and was recorded) when it was issued.
  return done(c10d::OpType::COALESCED, {}, nullptr);
}

}  // namespace fakepg
