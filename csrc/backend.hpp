// pytest-fakepg: a fake c10d backend for testing distributed PyTorch code in
// one process. FakeBackend serves one group: it checks each call, has the
// world it belongs to (a WorldState, world_state.hpp) count, record and
// fault it, and hands it to the world's value semantics (NOTE [Value
// semantics], semantics.hpp).
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <memory>
#include <string>
#include <vector>

#include "compat.hpp"
#include "semantics.hpp"
#include "world_state.hpp"

namespace fakepg {

class FakeBackend : public c10d::Backend {
 public:
  struct Options : c10d::Backend::Options {
    Options() : c10d::Backend::Options("fakepg") {}
    // A virtual of the base from torch 2.14 on (splitting a group clones its
    // options; the base's would slice), a plain method before: so no
    // `override`. See NOTE [compat: Options::clone].
    c10::intrusive_ptr<c10d::Backend::Options> clone() const {
      return c10::make_intrusive<Options>(*this);
    }
  };

  FakeBackend(
      c10::intrusive_ptr<WorldState> world,
      int rank,
      int size,
      std::string group_name,
      std::vector<int64_t> global_ranks,
      c10::intrusive_ptr<c10d::Backend> real = {});

  // On real ranks, the real backend's name (NOTE [Real ranks]).
  const std::string getBackendName() const override {
    return real_ ? real_->getBackendName() : "fakepg";
  }
  c10::intrusive_ptr<c10d::Backend::Options> getBackendOptions() override {
    return c10::make_intrusive<Options>();
  }
  // Nothing in a fake world waits, so there is nothing to time out; a real
  // backend is given the timeout.
  void setTimeout(std::chrono::milliseconds timeout) override;

  // NOTE [Sequence numbers]
  // One counter per group, as NCCL and gloo keep: the number of collectives
  // issued on this group so far. Every rank of a consistent program has the
  // same number at the same point.
  void setSequenceNumberForGroup() override {}
  uint64_t getSequenceNumberForGroup() override {
    return seq_;
  }

  c10::intrusive_ptr<c10d::Work> broadcast(
      std::vector<at::Tensor>& tensors,
      const c10d::BroadcastOptions& opts = c10d::BroadcastOptions()) override;
  c10::intrusive_ptr<c10d::Work> allreduce(
      std::vector<at::Tensor>& tensors,
      const c10d::AllreduceOptions& opts = c10d::AllreduceOptions()) override;
  c10::intrusive_ptr<c10d::Work> allreduce_sparse(
      std::vector<at::Tensor>& tensors,
      const c10d::AllreduceOptions& opts = c10d::AllreduceOptions()) override;
  c10::intrusive_ptr<c10d::Work> allreduce_coalesced(
      std::vector<at::Tensor>& tensors,
      const c10d::AllreduceCoalescedOptions& opts =
          c10d::AllreduceCoalescedOptions()) override;
  c10::intrusive_ptr<c10d::Work> reduce(
      std::vector<at::Tensor>& tensors,
      const c10d::ReduceOptions& opts = c10d::ReduceOptions()) override;
  c10::intrusive_ptr<c10d::Work> allgather(
      std::vector<std::vector<at::Tensor>>& outputs,
      std::vector<at::Tensor>& inputs,
      const c10d::AllgatherOptions& opts = c10d::AllgatherOptions()) override;
  // See NOTE [compat: deprecated overrides].
  c10::intrusive_ptr<c10d::Work> _allgather_base(
      at::Tensor& output,
      at::Tensor& input,
      const c10d::AllgatherOptions& opts = c10d::AllgatherOptions()) override;
  c10::intrusive_ptr<c10d::Work> allgather_coalesced(
      std::vector<std::vector<at::Tensor>>& outputs,
      std::vector<at::Tensor>& inputs,
      const c10d::AllgatherOptions& opts = c10d::AllgatherOptions()) override;
  c10::intrusive_ptr<c10d::Work> allgather_into_tensor_coalesced(
      std::vector<at::Tensor>& outputs,
      std::vector<at::Tensor>& inputs,
      const c10d::AllgatherOptions& opts = c10d::AllgatherOptions()) override;
  c10::intrusive_ptr<c10d::Work> gather(
      std::vector<std::vector<at::Tensor>>& outputs,
      std::vector<at::Tensor>& inputs,
      const c10d::GatherOptions& opts = c10d::GatherOptions()) override;
  // No `override`: see NOTE [compat: the _single collectives].
  c10::intrusive_ptr<c10d::Work> gather_single(
      at::Tensor& output,
      at::Tensor& input,
      const c10d::GatherOptions& opts = c10d::GatherOptions()) {
    return gatherIntoTensor(output, input, opts);
  }
  // gather into one tensor: input * group size elements on the root.
  c10::intrusive_ptr<c10d::Work> gatherIntoTensor(
      at::Tensor& output,
      at::Tensor& input,
      const c10d::GatherOptions& opts);
  c10::intrusive_ptr<c10d::Work> scatter(
      std::vector<at::Tensor>& outputs,
      std::vector<std::vector<at::Tensor>>& inputs,
      const c10d::ScatterOptions& opts = c10d::ScatterOptions()) override;
  c10::intrusive_ptr<c10d::Work> reduce_scatter(
      std::vector<at::Tensor>& outputs,
      std::vector<std::vector<at::Tensor>>& inputs,
      const c10d::ReduceScatterOptions& opts =
          c10d::ReduceScatterOptions()) override;
  // See NOTE [compat: deprecated overrides].
  c10::intrusive_ptr<c10d::Work> _reduce_scatter_base(
      at::Tensor& output,
      at::Tensor& input,
      const c10d::ReduceScatterOptions& opts =
          c10d::ReduceScatterOptions()) override;
  c10::intrusive_ptr<c10d::Work> reduce_scatter_tensor_coalesced(
      std::vector<at::Tensor>& outputs,
      std::vector<at::Tensor>& inputs,
      const c10d::ReduceScatterOptions& opts =
          c10d::ReduceScatterOptions()) override;
  c10::intrusive_ptr<c10d::Work> alltoall_base(
      at::Tensor& output,
      at::Tensor& input,
      std::vector<int64_t>& outputSplitSizes,
      std::vector<int64_t>& inputSplitSizes,
      const c10d::AllToAllOptions& opts = c10d::AllToAllOptions()) override;
  c10::intrusive_ptr<c10d::Work> alltoall(
      std::vector<at::Tensor>& outputs,
      std::vector<at::Tensor>& inputs,
      const c10d::AllToAllOptions& opts = c10d::AllToAllOptions()) override;
  c10::intrusive_ptr<c10d::Work> send(
      std::vector<at::Tensor>& tensors, int dstRank, int tag) override;
  c10::intrusive_ptr<c10d::Work> recv(
      std::vector<at::Tensor>& tensors, int srcRank, int tag) override;
  c10::intrusive_ptr<c10d::Work> recvAnysource(
      std::vector<at::Tensor>& tensors, int tag) override;
  c10::intrusive_ptr<c10d::Work> barrier(
      const c10d::BarrierOptions& opts = c10d::BarrierOptions()) override;

  void startCoalescing() override;
  c10::intrusive_ptr<c10d::Work> endCoalescing() override;

 private:
  // Checks `c` against the semantics, then counts, records and checks
  // faults; returns the error deferred to wait().
  std::exception_ptr begin(
      const Contribution& c,
      const std::vector<at::Tensor>& recorded,
      int32_t peer = kNoPeer,
      bool any_source = false);
  // This member's part of `op`; `reduce`: the op of a reducing collective.
  Contribution part(
      Op op,
      std::vector<at::Tensor> in,
      std::vector<at::Tensor> out,
      const c10d::ReduceOp& reduce = c10d::ReduceOp::UNUSED) const;
  // begin(), then the semantics' issue(); on real ranks, real() instead
  // (unless a fault fired).
  template <typename Real>
  c10::intrusive_ptr<c10d::Work> issue(
      Real&& real,
      Contribution c,
      c10d::OpType type,
      Results results,
      const std::vector<at::Tensor>& recorded,
      int32_t peer = kNoPeer,
      bool any_source = false);
  void checkRoot(const char* op, int64_t root) const;
  int32_t globalRank(int64_t group_rank) const;

  c10::intrusive_ptr<WorldState> world_;
  int group_;
  std::vector<int64_t> global_ranks_;
  uint64_t seq_ = 0;
  std::unique_ptr<Semantics> values_;
  // In a hybrid world, a group that reaches ranks that do not run: its
  // point-to-point ops between two running ranks (NOTE [Hybrid worlds]).
  std::unique_ptr<Semantics> pairs_;
  // NOTE [Real ranks]
  // On a real world (pytest --fake-world-real), the group's real gloo or
  // NCCL backend: every call is checked, counted, recorded and faulted as in
  // a fake world, then forwarded to it unchanged; a fault that fires is not
  // forwarded (its work fails as a fake one does). Null in a fake world.
  c10::intrusive_ptr<c10d::Backend> real_;
};

}  // namespace fakepg
