// One fake world's state, shared by every group's backend: the log, the call
// counters and the armed faults. See NOTE [World state].
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/custom_class.h>

#include <array>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace fakepg {

class Gate;  // exact.hpp
class Scheduler;  // exact.hpp
class Exchange;   // exact.hpp
struct Mismatch;  // exact.hpp

// A c10::DistBackendError carrying `msg`, as an exception_ptr.
std::exception_ptr distBackendError(const std::string& msg);

// An op's traits, as csrc/ops.def gives them.
constexpr uint8_t kSameShapes = 1;
constexpr uint8_t kFromRoot = 2;
constexpr uint8_t kToRoot = 4;
constexpr uint8_t kPointToPoint = 8;

// The collectives, from csrc/ops.def: Op::all_reduce, ...
enum class Op : uint8_t {
#define FAKEPG_OP(name, fr_name, traits, fr_sizes) name,
#define FAKEPG_ALIAS(public_name, name)
#include "ops.def"
#undef FAKEPG_ALIAS
#undef FAKEPG_OP
  kCount,
};
constexpr int kNumOps = static_cast<int>(Op::kCount);
const char* opName(Op op);
// Whether `op` has every trait of `traits` (kSameShapes | ...).
bool opHas(Op op, uint8_t traits);

constexpr uint8_t kNoReduceOp = 255;
constexpr int32_t kNoPeer = -1;
constexpr int32_t kNoSite = -1;
constexpr uint8_t kFailed = 1;     // an injected fault fired for this call
constexpr uint8_t kAnySource = 2;  // a recv from any source
constexpr uint8_t kObject = 4;     // issued by an object collective

// One collective, as recorded. Fixed size: the log is a flat vector of these
// plus one flat vector of shape data, so recording allocates nothing per call
// (amortised) and Python reads it back without a per-call object.
struct Record {
  Op op;
  uint8_t reduce_op;      // c10d::ReduceOp::RedOpType, or kNoReduceOp
  int8_t dtype;           // c10::ScalarType, or -1 when the op has no tensor
  uint8_t flags;          // kFailed | kAnySource
  int32_t group;          // index into the world's groups
  int32_t peer;           // global rank of the peer/root, or kNoPeer
  uint32_t ntensors;      // number of input shapes recorded
  uint64_t shape_offset;  // into WorldState::shapes_: per tensor, ndim, dims
  int64_t bytes;          // total bytes of the input tensors
};

struct GroupInfo {
  std::string name;
  int rank;  // the issuing rank's rank in the group
  int size;
  std::vector<int64_t> ranks;  // global ranks; empty for 0..size-1
  int global_rank;  // the issuing rank's global rank
};

enum class FailAt : uint8_t { issue = 0, wait = 1 };

struct Fault {
  int64_t id;
  int op;       // an Op, or -1 for every collective
  int64_t nth;  // 0: every call; n >= 1: only the n-th call, then disarmed
  FailAt at;
  int rank;  // the global rank it fires on, or -1 for any
};

enum class Values : uint8_t { uniform = 0, copy = 1, exact = 2 };

// NOTE [World state]
// Everything that belongs to one fake world rather than to one group: the
// value semantics, the log, the per-op call counters and the armed faults.
// Every backend of the world (the default group and each sub-group) holds the
// same WorldState, so a fault armed for "all_reduce" fires on a DeviceMesh
// sub-group too, and call numbers count across groups. Single-threaded by
// design, like the rest of a fake world: in an exact world every rank's
// backends share it, and only the rank holding the baton runs (NOTE [The
// baton]); call numbers then count per rank, as each process would.
class WorldState : public torch::CustomClassHolder {
 public:
  // `running`: the global ranks that run in an exact world (NOTE [Hybrid
  // worlds]); empty: every rank.
  WorldState(
      Values values,
      bool record,
      int world_size = 1,
      std::vector<int64_t> running = {});
  ~WorldState() override;

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
  const GroupInfo& group(int index) const {
    return groups_.at(index);
  }
  size_t numGroups() const {
    return groups_.size();
  }

  // Exact worlds: the scheduler of the ranks, and the exchange of the group
  // `name` over global `ranks` (empty: every rank), made on first use.
  const c10::intrusive_ptr<Scheduler>& scheduler() const {
    return scheduler_;
  }
  std::shared_ptr<Exchange> exchange(
      const std::string& name,
      const std::vector<int64_t>& ranks,
      int size);
  // NOTE [Hybrid worlds]
  // An exact world may run some of its ranks only: those that share one
  // rank's coordinates on every mesh dimension but the exact ones. The
  // scheduler then has a slot per running rank (their order), and a group
  // gets exact values only where every member runs; a group that reaches a
  // rank that does not run gets uniform values on each running member (as
  // in a uniform world: no member waits for another, so none can hang),
  // except that a send or recv between two running ranks meets its peer on
  // any group, as in an exact world (FakeBackend::pairs_).
  // The running rank's slot in the scheduler (its global rank where every
  // rank runs), or -1 for a rank that does not run.
  int runSlot(int global_rank) const {
    if (running_.empty()) {
      return global_rank;
    }
    return run_slot_.at(global_rank);
  }
  // Whether every member of a group over global `ranks` (empty: every rank)
  // runs.
  bool allRun(const std::vector<int64_t>& ranks) const;
  // A new run of every rank: no exchange of an earlier one is reused.
  // gates[r]: the gate of the thread that runs rank r (Scheduler::start).
  void startRun(std::vector<c10::intrusive_ptr<Gate>> gates);

  // Faults. `rank`: the global rank a fault fires on (-1: any).
  int64_t armFault(int op, int64_t nth, FailAt at, int rank = -1);
  bool disarmFault(int64_t id);
  bool isArmed(int64_t id) const;
  // Calls of `op` (-1: of every op) by `rank` (-1: by every rank; only exact
  // worlds count per rank).
  int64_t callCount(int op, int rank = -1) const;

  // NOTE [Call sites]
  // A consistency check across ranks names the user's line that issued each
  // collective. Finding it means walking the Python stack, so it happens only
  // while a site source is set (by Python, when a check will run): a
  // callable that returns the site's number, kept beside each record.
  // What to call a group in messages (its label: a mesh dimension's name,
  // "default_pg"), given its name; unset, the name in quotes.
  void setLabelSource(std::function<std::string(const std::string&)> source) {
    label_source_ = std::move(source);
  }
  void setSiteSource(std::function<int32_t()> source) {
    site_source_ = std::move(source);
  }
  // The words for a mismatch an exchange found (NOTE [Mismatches are worded
  // in Python], exact.hpp), by the source Python sets.
  void setMismatchSource(std::function<std::string(const Mismatch&)> source) {
    mismatch_source_ = std::move(source);
  }
  std::string mismatchText(const Mismatch& m) const;

  // NOTE [Object collectives] all_gather_object, broadcast_object_list and
  // the like move pickled bytes whose sizes follow each rank's objects (a
  // receiver sizes its buffer from what the sender said). Calls issued while
  // this is set carry kObject, and the check across ranks does not compare
  // their sizes.
  void setInObjectCollective(bool on) {
    in_object_collective_ = on;
  }

  // Called once per collective, before any output is written. Counts the
  // call, records it, and returns the injected error when a fault fires:
  // thrown right away for FailAt::issue, handed to the work for FailAt::wait.
  std::exception_ptr begin(
      Op op,
      int group,
      const std::vector<at::Tensor>& inputs,
      uint8_t reduce_op,
      int32_t peer,
      bool any_source = false);
  // The call site of the last call begin() saw, or kNoSite.
  int32_t lastSite() const {
    return last_site_;
  }

  // The log. Functions taking `rank` read the records of that global rank
  // only (-1: every record).
  size_t size() const {
    return records_.size();
  }
  bool issuedBy(const Record& r, int rank) const {
    return rank < 0 || groups_[r.group].global_rank == rank;
  }
  std::vector<size_t> indicesOf(int rank) const;
  const Record& record(size_t i) const {
    return records_.at(i);
  }
  int32_t site(size_t i) const {
    return i < sites_.size() ? sites_[i] : kNoSite;
  }
  std::vector<int64_t> shapesOf(const Record& r) const;
  int64_t count(int op, int rank = -1) const;
  int64_t totalBytes(int op, int rank = -1) const;
  void clearLog(int rank = -1);
  const std::vector<Record>& records() const {
    return records_;
  }

 private:
  void recordCall(
      Op op,
      int group,
      const std::vector<at::Tensor>& inputs,
      uint8_t reduce_op,
      int32_t peer,
      uint8_t flags);

  Values values_;
  bool record_;
  int world_size_;
  std::vector<int64_t> running_;  // NOTE [Hybrid worlds]; empty: every rank
  std::vector<int> run_slot_;  // by global rank: its slot, or -1
  int slots_;  // call counters: one per rank in exact worlds, else one
  c10::intrusive_ptr<Scheduler> scheduler_;
  std::map<std::string, std::shared_ptr<Exchange>> exchanges_;
  int32_t last_site_ = kNoSite;
  std::vector<GroupInfo> groups_;
  std::vector<Record> records_;
  std::vector<int64_t> shapes_;
  std::vector<int32_t> sites_;  // beside records_ once a site source was set
  std::function<int32_t()> site_source_;
  std::function<std::string(const std::string&)> label_source_;
  std::function<std::string(const Mismatch&)> mismatch_source_;
  bool in_object_collective_ = false;
  std::vector<std::array<int64_t, kNumOps>> calls_;
  std::vector<int64_t> total_calls_;
  std::vector<Fault> faults_;
  int64_t next_fault_id_ = 1;
};

}  // namespace fakepg
