// Value semantics: what a collective does once FakeBackend has checked,
// counted and recorded it. See NOTE [Value semantics].
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "world_state.hpp"

namespace fakepg {

// NOTE [Value semantics]
// Every collective a group's backend serves takes one path: FakeBackend
// checks its arguments as c10d's backends do, turns the call into a
// Contribution (this member's part: inputs, outputs, root, reduce op,
// splits, peer), counts, records and arms faults (WorldState::begin), and
// hands the part to the world's Semantics, one object per group, which
// returns its work. Two semantics, each one function per op:
//  - local (values.cpp): uniform and copy values, computed at issue from
//    this rank's data alone; the work is complete at once;
//  - exact (exact.cpp): the part is posted to the group's Exchange, and the
//    member that completes the set computes every member's outputs from
//    every member's inputs (NOTE [Exact worlds]).
// A new semantics is a new Semantics; no op asks which one it runs under.

// One member's part of a collective or point-to-point op.
struct Contribution {
  Op op;
  int rank;  // in the group
  int32_t global_rank;
  c10d::ReduceOp reduce;
  bool reduces = false;
  int64_t root = -1;  // in the group
  std::vector<at::Tensor> in;
  std::vector<at::Tensor> out;
  int size = 1;  // the group's
  // all_to_all_single: the split sizes given, one per rank, or none (equal
  // splits: splitRows computes them, so the common call keeps no list).
  std::vector<int64_t> in_splits;
  std::vector<int64_t> out_splits;
  int peer = -1;  // send/recv: the other member (group rank); -1 any source
  int tag = 0;
  c10::intrusive_ptr<c10d::Work> work;  // exact semantics: this part's

  // all_to_all_single: the rows of split j of the input (or the output).
  int64_t splitRows(bool input, int j) const {
    const auto& given = input ? in_splits : out_splits;
    if (!given.empty()) {
      return given[j];
    }
    const auto& t = input ? in.at(0) : out.at(0);
    return t.dim() ? t.size(0) / size : 0;
  }
  // all_to_all_single given no split sizes at all.
  bool evenSplits() const {
    return in_splits.empty() && out_splits.empty();
  }
};

// What a work's future holds, when it is not the part's outputs (kOutputs,
// most ops: one list fewer to copy per call).
using Results = std::optional<std::vector<at::Tensor>>;
inline constexpr std::nullopt_t kOutputs = std::nullopt;

class Semantics {
 public:
  virtual ~Semantics() = default;

  // Refuses, before the call is counted, what these semantics cannot do
  // with `c` (a TORCH_CHECK naming the op).
  virtual void check(const Contribution& c) const = 0;
  // The group rank a recv from any source names as its sender, or -1 when
  // it is known only once a sender matches.
  virtual int anySource() const = 0;
  // Does `c`, already counted and recorded; `fault` is the error an
  // injected fault deferred to wait() (outputs are then not written).
  // `results` are what the work's future holds: kOutputs for c.out.
  virtual c10::intrusive_ptr<c10d::Work> issue(
      Contribution c,
      c10d::OpType type,
      Results results,
      std::exception_ptr fault) = 0;
  virtual void startCoalescing() = 0;
  virtual c10::intrusive_ptr<c10d::Work> endCoalescing() = 0;
};

// A future already completed with `outputs`, or failed with `error`: what
// getFuture() returns once work is complete.
c10::intrusive_ptr<c10::ivalue::Future> completedFuture(
    const std::vector<at::Tensor>& outputs,
    std::exception_ptr error);

class Exchange;  // exact.hpp

// Uniform or copy values for a member of a group of `size` (values.cpp).
std::unique_ptr<Semantics> localSemantics(bool uniform, int rank, int size);
// Exact values: the member's parts meet the other members' in `exchange`
// (exact.cpp).
std::unique_ptr<Semantics> exactSemantics(
    c10::intrusive_ptr<WorldState> world,
    std::shared_ptr<Exchange> exchange,
    std::string group_name,
    int global_rank);

}  // namespace fakepg
