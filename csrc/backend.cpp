#include "backend.hpp"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <functional>

#include "compat.hpp"
#include "text.hpp"

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

// What c10d's validators call with a complaint about an argument of `op`
// (NOTE [compat: argument validators]).
std::function<void(const std::string&)> invalidArgument(const char* op) {
  return [op](const std::string& complaint) {
    TORCH_CHECK(false, cat("fakepg ", op, ": ", complaint));
  };
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
// FakeBackend: each op checks its arguments and builds this member's part;
// the semantics do the rest (NOTE [Value semantics], semantics.hpp).

FakeBackend::FakeBackend(
    c10::intrusive_ptr<WorldState> world,
    int rank,
    int size,
    std::string group_name,
    std::vector<int64_t> global_ranks,
    c10::intrusive_ptr<c10d::Backend> real)
    : c10d::Backend(rank, size),
      world_(std::move(world)),
      real_(std::move(real)) {
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
  const int global_rank = global_ranks.empty()
      ? rank
      : static_cast<int>(global_ranks.at(rank));
  if (world_->values() == Values::exact && world_->allRun(global_ranks)) {
    values_ = exactSemantics(
        world_,
        world_->exchange(group_name, global_ranks, size),
        group_name,
        global_rank);
  } else {
    // A group reaching ranks that do not run: uniform, but for a send or
    // recv between two running ranks (NOTE [Hybrid worlds]).
    values_ = localSemantics(world_->values() != Values::copy, rank, size);
    if (world_->values() == Values::exact) {
      pairs_ = exactSemantics(
          world_,
          world_->exchange(group_name, global_ranks, size),
          group_name,
          global_rank);
    }
  }
  group_ = world_->addGroup(GroupInfo{
      std::move(group_name), rank, size, std::move(global_ranks), global_rank});
}

Contribution FakeBackend::part(
    Op op,
    std::vector<at::Tensor> in,
    std::vector<at::Tensor> out,
    const c10d::ReduceOp& reduce) const {
  Contribution c;
  c.op = op;
  c.rank = rank_;
  c.size = size_;
  c.global_rank = globalRank(rank_);
  c.in = std::move(in);
  c.out = std::move(out);
  c.reduce = reduce;
  c.reduces = reduce.op_ != c10d::ReduceOp::UNUSED;
  return c;
}

void FakeBackend::checkRoot(const char* op, int64_t root) const {
  const auto invalid = invalidArgument(op);
  compat::assertRootRank(
      [&](const std::string& complaint) {
        invalid(cat(complaint, " (a group of ", size_, " has ranks 0 to ", size_ - 1, ")"));
      },
      root,
      size_);
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
    const Contribution& c,
    const std::vector<at::Tensor>& recorded,
    int32_t peer,
    bool any_source) {
  if (!real_) {
    values_->check(c);
  }
  ++seq_;
  const auto reduce_op = c.reduces ? redOf(c.reduce) : kNoReduceOp;
  return world_->begin(c.op, group_, recorded, reduce_op, peer, any_source);
}

template <typename Real>
c10::intrusive_ptr<c10d::Work> FakeBackend::issue(
    Real&& real,
    Contribution c,
    c10d::OpType type,
    Results results,
    const std::vector<at::Tensor>& recorded,
    int32_t peer,
    bool any_source) {
  auto fault = begin(c, recorded, peer, any_source);
  if (real_ && !fault) {
    return real();  // NOTE [Real ranks]: recorded, then forwarded unchanged
  }
  const bool pair = pairs_ && (c.op == Op::send || c.op == Op::recv) &&
      !any_source && world_->runSlot(peer) >= 0;
  auto& semantics = pair ? pairs_ : values_;
  return semantics->issue(std::move(c), type, std::move(results), fault);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::broadcast(
    std::vector<at::Tensor>& tensors,
    const c10d::BroadcastOptions& opts) {
  checkRoot("broadcast", opts.rootRank);
  auto c = part(Op::broadcast, tensors, tensors);
  c.root = opts.rootRank;
  return issue(
      [&] { return real_->broadcast(tensors, opts); },
      std::move(c),
      c10d::OpType::BROADCAST,
      kOutputs,
      tensors,
      globalRank(opts.rootRank));
}

c10::intrusive_ptr<c10d::Work> FakeBackend::allreduce(
    std::vector<at::Tensor>& tensors,
    const c10d::AllreduceOptions& opts) {
  return issue(
      [&] { return real_->allreduce(tensors, opts); },
      part(Op::all_reduce, tensors, tensors, opts.reduceOp),
      c10d::OpType::ALLREDUCE,
      kOutputs,
      tensors);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::allreduce_sparse(
    std::vector<at::Tensor>& tensors,
    const c10d::AllreduceOptions& opts) {
  return issue(
      [&] { return real_->allreduce_sparse(tensors, opts); },
      part(Op::all_reduce, tensors, tensors, opts.reduceOp),
      c10d::OpType::ALLREDUCE,
      tensors,
      tensors);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::allreduce_coalesced(
    std::vector<at::Tensor>& tensors,
    const c10d::AllreduceCoalescedOptions& opts) {
  const auto op =
      coalescedOr(Op::all_reduce, Op::all_reduce_coalesced, tensors.size());
  return issue(
      [&] { return real_->allreduce_coalesced(tensors, opts); },
      part(op, tensors, tensors, opts.reduceOp),
      c10d::OpType::ALLREDUCE_COALESCED,
      kOutputs,
      tensors);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::reduce(
    std::vector<at::Tensor>& tensors,
    const c10d::ReduceOptions& opts) {
  checkRoot("reduce", opts.rootRank);
  const auto& t = tensors.at(opts.rootTensor);
  auto c = part(Op::reduce, {t}, {t}, opts.reduceOp);
  c.root = opts.rootRank;
  return issue(
      [&] { return real_->reduce(tensors, opts); },
      std::move(c),
      c10d::OpType::REDUCE,
      tensors,
      tensors,
      globalRank(opts.rootRank));
}

c10::intrusive_ptr<c10d::Work> FakeBackend::allgather(
    std::vector<std::vector<at::Tensor>>& outputs,
    std::vector<at::Tensor>& inputs,
    const c10d::AllgatherOptions& opts) {
  const auto invalid = invalidArgument("all_gather");
  compat::assertSingleElementInput(invalid, inputs);
  compat::assertGatherOutputTensorList(invalid, outputs, size_);
  return issue(
      [&] { return real_->allgather(outputs, inputs, opts); },
      part(Op::all_gather, inputs, outputs[0]),
      c10d::OpType::ALLGATHER,
      kOutputs,
      inputs);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::_allgather_base(
    at::Tensor& output,
    at::Tensor& input,
    const c10d::AllgatherOptions& opts) {
  checkNumel("all_gather_into_tensor", output, input, size_, "output", "input");
  return issue(
      [&] { return real_->_allgather_base(output, input, opts); },
      part(Op::all_gather_into_tensor, {input}, {output}),
      c10d::OpType::_ALLGATHER_BASE,
      kOutputs,
      {input});
}

c10::intrusive_ptr<c10d::Work> FakeBackend::allgather_coalesced(
    std::vector<std::vector<at::Tensor>>& outputs,
    std::vector<at::Tensor>& inputs,
    const c10d::AllgatherOptions& opts) {
  compat::assertAllgatherCoalescedOutputTensorLists(
      invalidArgument("all_gather_coalesced"),
      outputs,
      inputs.size(),
      size_);
  std::vector<at::Tensor> outs;  // laid out [j * inputs + k]
  for (const auto& list : outputs) {
    outs.insert(outs.end(), list.begin(), list.end());
  }
  return issue(
      [&] { return real_->allgather_coalesced(outputs, inputs, opts); },
      part(Op::all_gather_coalesced, inputs, outs),
      c10d::OpType::ALLGATHER_COALESCED,
      kOutputs,
      inputs);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::allgather_into_tensor_coalesced(
    std::vector<at::Tensor>& outputs,
    std::vector<at::Tensor>& inputs,
    const c10d::AllgatherOptions& opts) {
  const char* name = "all_gather_into_tensor_coalesced";
  checkSameCount(name, outputs.size(), inputs.size(), "inputs");
  for (size_t i = 0; i < outputs.size(); ++i) {
    checkNumel(name, outputs[i], inputs[i], size_, "output", "input");
  }
  const auto op = coalescedOr(
      Op::all_gather_into_tensor,
      Op::all_gather_into_tensor_coalesced,
      inputs.size());
  return issue(
      [&] {
        return real_->allgather_into_tensor_coalesced(outputs, inputs, opts);
      },
      part(op, inputs, outputs), c10d::OpType::COALESCED, kOutputs, inputs);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::gather(
    std::vector<std::vector<at::Tensor>>& outputs,
    std::vector<at::Tensor>& inputs,
    const c10d::GatherOptions& opts) {
  checkRoot("gather", opts.rootRank);
  const auto invalid = invalidArgument("gather");
  compat::assertSingleElementInput(invalid, inputs);
  const bool root = rank_ == opts.rootRank;
  if (root) {
    compat::assertGatherOutputTensorList(invalid, outputs, size_);
  }
  auto outs = root ? outputs[0] : std::vector<at::Tensor>{};
  auto c = part(Op::gather, inputs, outs);
  c.root = opts.rootRank;
  return issue(
      [&] { return real_->gather(outputs, inputs, opts); },
      std::move(c),
      c10d::OpType::GATHER,
      kOutputs,
      inputs,
      globalRank(opts.rootRank));
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
  auto outs = root ? std::vector<at::Tensor>{output} : std::vector<at::Tensor>{};
  auto c = part(Op::gather_into_tensor, {input}, outs);
  c.root = opts.rootRank;
  return issue(
      [&] { return compat::gatherSingle(*real_, output, input, opts); },
      std::move(c),
      c10d::OpType::GATHER,
      kOutputs,
      {input},
      globalRank(opts.rootRank));
}

c10::intrusive_ptr<c10d::Work> FakeBackend::scatter(
    std::vector<at::Tensor>& outputs,
    std::vector<std::vector<at::Tensor>>& inputs,
    const c10d::ScatterOptions& opts) {
  checkRoot("scatter", opts.rootRank);
  const auto invalid = invalidArgument("scatter");
  compat::assertSingleElementOutput(invalid, outputs);
  const bool root = rank_ == opts.rootRank;
  if (root) {
    compat::assertScatterInputTensorList(invalid, inputs, size_);
  }
  auto c = part(
      Op::scatter, root ? inputs[0] : std::vector<at::Tensor>{}, outputs);
  c.root = opts.rootRank;
  return issue(
      [&] { return real_->scatter(outputs, inputs, opts); },
      std::move(c),
      c10d::OpType::SCATTER,
      kOutputs,
      root ? inputs[0] : outputs,
      globalRank(opts.rootRank));
}

c10::intrusive_ptr<c10d::Work> FakeBackend::reduce_scatter(
    std::vector<at::Tensor>& outputs,
    std::vector<std::vector<at::Tensor>>& inputs,
    const c10d::ReduceScatterOptions& opts) {
  checkSameCount("reduce_scatter", outputs.size(), inputs.size(), "input lists");
  std::vector<at::Tensor> flat;  // laid out [k * n + r]
  for (const auto& list : inputs) {
    TORCH_CHECK(
        static_cast<int>(list.size()) == size_,
        cat("fakepg reduce_scatter: the input list has ",
            list.size(),
            " tensors but the group has ",
            size_,
            " ranks"));
    flat.insert(flat.end(), list.begin(), list.end());
  }
  auto c = part(Op::reduce_scatter, flat, outputs, opts.reduceOp);
  return issue(
      [&] { return real_->reduce_scatter(outputs, inputs, opts); },
      std::move(c),
      c10d::OpType::REDUCE_SCATTER,
      kOutputs,
      flat);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::_reduce_scatter_base(
    at::Tensor& output,
    at::Tensor& input,
    const c10d::ReduceScatterOptions& opts) {
  checkNumel("reduce_scatter_tensor", input, output, size_, "input", "output");
  return issue(
      [&] { return real_->_reduce_scatter_base(output, input, opts); },
      part(Op::reduce_scatter_tensor, {input}, {output}, opts.reduceOp),
      c10d::OpType::_REDUCE_SCATTER_BASE,
      kOutputs,
      {input});
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
  return issue(
      [&] {
        return real_->reduce_scatter_tensor_coalesced(outputs, inputs, opts);
      },
      part(op, inputs, outputs, opts.reduceOp),
      c10d::OpType::COALESCED,
      kOutputs,
      inputs);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::alltoall_base(
    at::Tensor& output,
    at::Tensor& input,
    std::vector<int64_t>& outputSplitSizes,
    std::vector<int64_t>& inputSplitSizes,
    const c10d::AllToAllOptions& opts) {
  compat::checkSplitSizes(inputSplitSizes, input, size_);
  compat::checkSplitSizes(outputSplitSizes, output, size_);
  auto c = part(Op::all_to_all_single, {input}, {output});
  c.in_splits = inputSplitSizes;
  c.out_splits = outputSplitSizes;
  return issue(
      [&] {
        return real_->alltoall_base(
            output, input, outputSplitSizes, inputSplitSizes, opts);
      },
      std::move(c), c10d::OpType::ALLTOALL_BASE, kOutputs, {input});
}

c10::intrusive_ptr<c10d::Work> FakeBackend::alltoall(
    std::vector<at::Tensor>& outputs,
    std::vector<at::Tensor>& inputs,
    const c10d::AllToAllOptions& opts) {
  compat::assertAllToAllTensorListSizes(
      invalidArgument("all_to_all"), outputs.size(), inputs.size(), size_);
  return issue(
      [&] { return real_->alltoall(outputs, inputs, opts); },
      part(Op::all_to_all, inputs, outputs),
      c10d::OpType::ALLTOALL,
      kOutputs,
      inputs);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::send(
    std::vector<at::Tensor>& tensors,
    int dstRank,
    int tag) {
  auto c = part(Op::send, tensors, {});
  c.peer = dstRank;
  c.tag = tag;
  return issue(
      [&] { return real_->send(tensors, dstRank, tag); },
      std::move(c), c10d::OpType::SEND, tensors, tensors, globalRank(dstRank));
}

c10::intrusive_ptr<c10d::Work> FakeBackend::recv(
    std::vector<at::Tensor>& tensors,
    int srcRank,
    int tag) {
  auto c = part(Op::recv, {}, tensors);
  c.peer = srcRank;
  c.tag = tag;
  return issue(
      [&] { return real_->recv(tensors, srcRank, tag); },
      std::move(c), c10d::OpType::RECV, kOutputs, tensors, globalRank(srcRank));
}

// NOTE [recv from any source] (values.cpp) says which peer a local recv
// names; an exact one learns it from the send it matches.
c10::intrusive_ptr<c10d::Work> FakeBackend::recvAnysource(
    std::vector<at::Tensor>& tensors,
    int tag) {
  auto c = part(Op::recv, {}, tensors);
  c.peer = values_->anySource();
  c.tag = tag;
  const auto peer = globalRank(c.peer);
  return issue(
      [&] { return real_->recvAnysource(tensors, tag); },
      std::move(c),
      c10d::OpType::RECVANYSOURCE,
      kOutputs,
      tensors,
      peer,
      /*any_source=*/true);
}

c10::intrusive_ptr<c10d::Work> FakeBackend::barrier(
    const c10d::BarrierOptions& opts) {
  return issue(
      [&] { return real_->barrier(opts); },
      part(Op::barrier, {}, {}),
      c10d::OpType::BARRIER,
      kOutputs,
      {});
}

void FakeBackend::setTimeout(std::chrono::milliseconds timeout) {
  if (real_) {
    real_->setTimeout(timeout);
  }
}

void FakeBackend::startCoalescing() {
  if (real_) {
    real_->startCoalescing();
    return;
  }
  values_->startCoalescing();
  if (pairs_) {
    pairs_->startCoalescing();
  }
}

c10::intrusive_ptr<c10d::Work> FakeBackend::endCoalescing() {
  if (real_) {
    return real_->endCoalescing();
  }
  auto work = values_->endCoalescing();  // complete at once: local values
  return pairs_ ? pairs_->endCoalescing() : work;
}

}  // namespace fakepg
