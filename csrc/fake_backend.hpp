// pytest-fakepg: a fake c10d backend for testing distributed PyTorch code in
// one process. See ../README.md and the NOTE blocks below.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#include <type_traits>
#include <vector>

namespace fakepg {

// NOTE [No iostreams]
// Messages are built by concatenation, never with c10::str or TORCH_CHECK's
// variadic form: those instantiate std::ostream code inside this library, and
// where the compiler that builds it is not the one whose libstdc++ is loaded
// at run time (seen on a CUDA image whose CXX is a newer GCC than the system's)
// that code crashes. TORCH_CHECK(cond, std::string) formats nothing itself.
inline void append(std::string& s, const char* x) {
  s += x;
}
inline void append(std::string& s, const std::string& x) {
  s += x;
}
inline void append(std::string& s, c10::IntArrayRef xs) {
  s += '[';
  for (size_t i = 0; i < xs.size(); ++i) {
    s += (i ? ", " : "") + std::to_string(xs[i]);
  }
  s += ']';
}
template <typename T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
void append(std::string& s, T x) {
  s += std::to_string(x);
}
template <typename... Args>
std::string cat(const Args&... args) {
  std::string s;
  (append(s, args), ...);
  return s;
}

// The collectives a user calls in torch.distributed, under those names.
// The Python side (pytest_fakepg/records.py) keeps the same order in OP_NAMES.
enum class Op : uint8_t {
  all_reduce = 0,
  all_reduce_coalesced,
  all_gather,
  all_gather_into_tensor,
  all_gather_coalesced,
  all_gather_into_tensor_coalesced,
  reduce_scatter,
  reduce_scatter_tensor,
  reduce_scatter_tensor_coalesced,
  all_to_all,
  all_to_all_single,
  broadcast,
  reduce,
  gather,
  scatter,
  send,
  recv,
  barrier,
  kCount,
};
constexpr int kNumOps = static_cast<int>(Op::kCount);
const char* opName(Op op);

constexpr uint8_t kNoReduceOp = 255;
constexpr int32_t kNoPeer = -1;

// One collective, as recorded. Fixed size: the log is a flat vector of these
// plus one flat vector of shape data, so recording allocates nothing per call
// (amortised) and Python reads it back without a per-call object.
struct Record {
  Op op;
  uint8_t reduce_op;      // c10d::ReduceOp::RedOpType, or kNoReduceOp
  int8_t dtype;           // c10::ScalarType, or -1 when the op has no tensor
  uint8_t failed;         // 1 when an injected fault fired for this call
  int32_t group;          // index into WorldState::groups()
  int32_t peer;           // global rank of the peer/root, or kNoPeer
  uint32_t ntensors;      // number of input shapes recorded
  uint64_t shape_offset;  // into WorldState::shapes_: per tensor, ndim, dims
  int64_t bytes;          // total bytes of the input tensors
};

struct GroupInfo {
  std::string name;
  int rank;  // this rank's rank in the group
  int size;
  std::vector<int64_t> ranks;  // the global ranks in the group
};

enum class FailAt : uint8_t { issue = 0, wait = 1 };

struct Fault {
  int64_t id;
  int op;       // an Op, or -1 for every collective
  int64_t nth;  // 0: every call; n >= 1: only the n-th call, then disarmed
  FailAt at;
};

enum class Values : uint8_t { uniform = 0, copy = 1 };

// NOTE [World state]
// Everything that belongs to one fake world rather than to one group: the
// value semantics, the log, the per-op call counters and the armed faults.
// Every backend of the world (the default group and each sub-group) holds the
// same WorldState, so a fault armed for "all_reduce" fires on a DeviceMesh
// sub-group too, and call numbers count across groups. Single-threaded by
// design, like the rest of a fake world.
class WorldState : public torch::CustomClassHolder {
 public:
  explicit WorldState(Values values, bool record)
      : values_(values), record_(record) {}

  Values values() const {
    return values_;
  }
  bool recording() const {
    return record_;
  }
  void setRecording(bool on) {
    record_ = on;
  }

  int addGroup(GroupInfo info);
  const std::vector<GroupInfo>& groups() const {
    return groups_;
  }
  const GroupInfo& group(int index) const {
    return groups_.at(index);
  }

  // Faults.
  int64_t armFault(int op, int64_t nth, FailAt at);
  bool disarmFault(int64_t id);
  int64_t callCount(int op) const {
    return op < 0 ? total_calls_ : calls_.at(op);
  }

  // Called once per collective, before any output is written. Counts the
  // call, records it, and returns the injected error when a fault fires:
  // thrown right away for FailAt::issue, handed to the work for FailAt::wait.
  std::exception_ptr begin(
      Op op,
      int group,
      const std::vector<at::Tensor>& inputs,
      uint8_t reduce_op,
      int32_t peer);

  // The log.
  size_t size() const {
    return records_.size();
  }
  const Record& record(size_t i) const {
    return records_.at(i);
  }
  std::vector<int64_t> shapesOf(const Record& r) const;
  int64_t count(int op) const;
  int64_t totalBytes(int op) const;
  void clearLog() {
    records_.clear();
    shapes_.clear();
  }
  const std::vector<Record>& records() const {
    return records_;
  }

 private:
  Values values_;
  bool record_;
  std::vector<GroupInfo> groups_;
  std::vector<Record> records_;
  std::vector<int64_t> shapes_;
  std::array<int64_t, kNumOps> calls_{};
  int64_t total_calls_ = 0;
  std::vector<Fault> faults_;
  int64_t next_fault_id_ = 1;
};

// Work that is complete the moment it is created. It holds the outputs for
// result() and getFuture(), or the injected error for wait()/getFuture().
class FakeWork : public c10d::Work {
 public:
  FakeWork(
      int rank,
      c10d::OpType type,
      std::vector<at::Tensor> outputs,
      std::exception_ptr error,
      int source_rank = -1);

  bool isCompleted() override {
    return true;
  }
  bool isSuccess() const override {
    return !exception_;
  }
  std::exception_ptr exception() const override {
    return exception_;
  }
  std::vector<at::Tensor> result() override {
    return outputs_;
  }
  int sourceRank() const override;
  void synchronize() override {}
  bool wait(std::chrono::milliseconds /* timeout */ = kNoTimeout) override;
  c10::intrusive_ptr<c10::ivalue::Future> getFuture() override;

 private:
  std::vector<at::Tensor> outputs_;
  int source_rank_;  // group rank a recv-from-any "received" from, else -1
};

class FakeBackend : public c10d::Backend {
 public:
  struct Options : c10d::Backend::Options {
    explicit Options() : c10d::Backend::Options("fakepg") {}
  };

  FakeBackend(
      c10::intrusive_ptr<WorldState> world,
      int rank,
      int size,
      std::string group_name,
      std::vector<int64_t> global_ranks);

  const std::string getBackendName() const override {
    return "fakepg";
  }
  c10::intrusive_ptr<c10d::Backend::Options> getBackendOptions() override {
    return c10::make_intrusive<Options>();
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
  c10::intrusive_ptr<c10d::Work> scatter(
      std::vector<at::Tensor>& outputs,
      std::vector<std::vector<at::Tensor>>& inputs,
      const c10d::ScatterOptions& opts = c10d::ScatterOptions()) override;
  c10::intrusive_ptr<c10d::Work> reduce_scatter(
      std::vector<at::Tensor>& outputs,
      std::vector<std::vector<at::Tensor>>& inputs,
      const c10d::ReduceScatterOptions& opts =
          c10d::ReduceScatterOptions()) override;
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

  void startCoalescing() override {}
  c10::intrusive_ptr<c10d::Work> endCoalescing() override;

 private:
  // Counts, records and checks faults; returns the error deferred to wait().
  std::exception_ptr begin(
      Op op,
      const std::vector<at::Tensor>& inputs,
      uint8_t reduce_op = kNoReduceOp,
      int32_t peer = kNoPeer);
  void checkRoot(const char* op, int64_t root) const;
  int32_t globalRank(int64_t group_rank) const;
  c10::intrusive_ptr<c10d::Work> done(
      c10d::OpType type,
      std::vector<at::Tensor> outputs,
      std::exception_ptr error);
  bool uniform() const {
    return world_->values() == Values::uniform;
  }

  c10::intrusive_ptr<WorldState> world_;
  int group_;
  std::vector<int64_t> global_ranks_;
};

}  // namespace fakepg
