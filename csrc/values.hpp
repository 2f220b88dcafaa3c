// Local values (uniform and copy): what a fake collective writes into its
// outputs from this rank's data alone, the local Semantics (NOTE [Value
// semantics], semantics.hpp) and the completed work it returns. See NOTE
// [Uniform values] and NOTE [Fast paths] in values.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <cstdint>
#include <exception>
#include <vector>

#include "semantics.hpp"

namespace fakepg {

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


// dst = flat(src)[offset : offset + dst.numel()), dst read flat too.
void copyFlat(const at::Tensor& dst, const at::Tensor& src, int64_t offset = 0);

// Every one of `n` equal chunks of `out` = flat(in)[offset : offset +
// out.numel() / n).
void fillChunks(
    const at::Tensor& out,
    const at::Tensor& in,
    int64_t n,
    int64_t offset = 0);

// Reduce `t` in place as `n` ranks holding `t` each would: NOTE [Uniform
// values].
void reduceUniform(at::Tensor& t, const c10d::ReduceOp& op, int64_t n);

// out = chunk `index` of flat(in) (chunks of out.numel()), then, when
// `uniform`, reduced over `n` equal ranks: reduce_scatter's result.
void reduceScatterChunk(
    at::Tensor& out,
    const at::Tensor& in,
    int64_t index,
    const c10d::ReduceOp& op,
    int64_t n,
    bool uniform);

// all_to_all_single (`c`): NOTE [all_to_all under uniform values]. The
// splits are already validated.
// Whether every output split equals input split `rank` (the same splits on
// every rank), and the chunk peer `j` sends `rank` otherwise (a ring
// exchange): NOTE [all_to_all under uniform values].
bool sameSplits(const Contribution& c, int rank);
int across(int rank, int j, int n);
void allToAllUniform(const Contribution& c, int rank);
// torch's stock fake approximation: each output split repeats the start of
// the input.
void allToAllCopy(const Contribution& c);

}  // namespace fakepg
