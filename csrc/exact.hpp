// Exact values: every rank of the world runs, each on its own thread, and a
// collective computes its result from every member's inputs. See NOTE [Exact
// worlds] in exact.cpp.
#pragma once

#include <ATen/core/MT19937RNGEngine.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "platform.hpp"
#include "semantics.hpp"
#include "world_state.hpp"

namespace fakepg {

class ExactWork;

// What a thread that runs ranks sleeps on until it is its rank's turn: a
// semaphore (the cheapest hand-over between threads, and no lost wake-ups;
// see platform.hpp). Owned by the thread, not by a run: pooled threads keep
// theirs from one exact world to the next. A wake-up may be stale (left by a
// stopped run); whoever waits rechecks why it woke.
class Gate : public c10::intrusive_ptr_target {
 public:
  // Wakes the waiting thread; `here`: on the CPU the caller runs on (NOTE
  // [Hand-overs stay on one CPU], exact.cpp).
  void open(bool here = false);
  // Waits for open(); the caller must not hold the GIL. Returns false,
  // without waiting further, if the wait is cut short (a signal, or in the
  // portable build a tick) and `interruptible`, so that the caller can run
  // Python's signal handlers. Either way the thread returns settled.
  bool wait(bool interruptible = false);
  // By the waiting thread, before it runs anything that a hand-over's
  // open(here=true) could have found it about to run: its own affinity and
  // policy back. Cheap when there is nothing to undo.
  void settle();
  // Drops wake-ups left over from a stopped run, and their narrowing.
  void reset();

 private:
  platform::Semaphore sem_;
  std::mutex mu_;  // guards what follows
  uint64_t waiter_ = 0;  // the thread that waits on this gate, once it has
  platform::Placement placement_;  // of the waiter, by a hand-over
};

// The state of torch's default CPU generator: its engine and the normal
// samples it has cached, which is all that torch.get_rng_state() holds.
// Copied in and out at each switch (NOTE [The baton]): a few kilobytes
// copied, where get_rng_state()/set_rng_state() made and parsed a tensor.
struct CpuRng {
  at::mt19937 engine;
  std::optional<float> next_float;
  std::optional<double> next_double;
  static CpuRng current();
  void install() const;
};

// What a waiting rank waits for, as a deadlock report says it: the call
// (an op, or a store wait's call), its group (empty for a store wait) and
// the user's line (an index into the world's call sites; -1 for none). An
// empty op: it waits for nothing.
struct Waiting {
  std::string op;
  std::string group;
  int32_t site = -1;
};

// NOTE [The baton]
// The ranks of an exact world run one at a time: the rank holding the baton
// runs, every other rank waits for it. A rank passes the baton on only when it
// must wait for other ranks (a collective not yet complete) or when its
// program ends; the next rank to run is the first runnable one after it, in
// rank order. So a run is deterministic, every per-process state torch keeps
// (the RNG, DTensor's RNG tracker) can be swapped at the one place ranks
// change, and a hang is simply "no rank can run": it is reported at once.
// The thread that starts a run runs rank 0 itself; each other rank's thread
// sleeps on its own Gate until the baton first reaches it, so a switch wakes
// exactly one thread.
class Scheduler : public c10::intrusive_ptr_target {
 public:
  explicit Scheduler(int world_size);

  // Called from Python; the calls that wait, without the GIL (bindings.cpp,
  // withoutGil). start() readies a run of every rank;
  // gates[r] is the gate of the thread that runs rank r, and the caller runs
  // rank 0 itself: it holds the baton from the start (NOTE [The baton]).
  // enter() waits for the baton and returns false if the run was stopped
  // before this rank ran; leave() ends the rank's program and passes the
  // baton on. ended() is the last thing a rank's thread does in the run,
  // with the GIL held: finish() waits, on gates[0] (the caller's), until every
  // rank has called it, so the caller never goes on while a rank's thread is
  // still taking the GIL back. finish() returns false if a signal
  // interrupted the wait (call it again after Python has handled it).
  void start(std::vector<c10::intrusive_ptr<Gate>> gates);
  bool enter(int rank);
  void leave(int rank);
  void ended(int rank);
  bool finish();
  // Stop the run: every waiting rank wakes and raises `reason`.
  void abort(const std::string& reason);
  // Whether the run stopped because no rank could run.
  bool deadlocked() const;

  // Wait until `work` completes, running other ranks meanwhile (from inside
  // Work::wait). Throws when the run is stopped.
  void block(int rank, ExactWork* work);
  // Wait until `ready()` holds, running other ranks meanwhile: a store wait
  // (NOTE [Store waits are turns], store.py). `ready` is called with
  // the scheduler's lock held, from whichever thread picks the next rank, so
  // it must neither take the GIL nor call back into the scheduler; `what`
  // is what waiting() reports. Returns false if the wait timed out: NOTE [A
  // store wait times out].
  bool blockUntil(int rank, std::function<bool()> ready, Waiting what);
  // At each switch, by the rank that stops running, before the next one
  // wakes, the scheduler saves rank `from`'s CPU generator (from is -1 when
  // that rank finished) and installs `to`'s; each rank starts with the state
  // the caller had at start(). Then, with the GIL, hook(from, to) does the
  // same for the per-process state Python keeps.
  void setSwitchHook(std::function<void(int, int)> hook) {
    hook_ = std::move(hook);
  }
  // Puts back the CPU generator the caller had at start(): the caller's
  // stream goes on as if the run had not drawn from it.
  void restoreCallerRng() const {
    caller_rng_.install();
  }
  // Per rank: 0 not started, 1 running or runnable, 2 waiting, 3 finished;
  // after a deadlock, as it was found.
  std::vector<int> states() const;
  // What each rank waits for (an empty op if nothing); after a deadlock, as
  // it was found.
  std::vector<Waiting> waiting() const;

  // A rank's state, as states() reports it.
  enum State : int { kNew = 0, kReady = 1, kBlocked = 2, kDone = 3 };

 private:
  // What a waiting rank waits for: its work (block()), or a condition and
  // its description (blockUntil()).
  struct Wait {
    ExactWork* work = nullptr;
    std::function<bool()> ready;
    Waiting what;
    long since = 0;  // a store wait's place in the order waits began
    bool timed_out = false;
  };
  bool runnable(int rank) const;
  // With mu_ held: what `rank` waits for (waiting()).
  Waiting waitingFor(int rank) const;
  // Without mu_, on `rank`'s thread (the running one): it waits for `wait`,
  // running the other ranks meanwhile; `on` completes the error "rank r
  // waited on ..." for a thread that is not running `rank`. Returns false if
  // the wait timed out.
  bool suspend(int rank, Wait wait, const char* on);
  // With mu_ held, when no rank can run: the rank whose store wait began
  // first, its wait marked timed out, or -1 if no rank waits on the store.
  int timeOutAStoreWait();
  // With mu_ held: the next runnable rank after `rank`; or -1, stopping the
  // run as deadlocked if ranks remain and none can run.
  int pickNext(int rank);
  // Without mu_, by the rank that stops running: swap the process-wide state
  // (the hook), then wake `next`.
  void handTo(int from, int next);
  void throwIfAborted() const;
  void wakeAll();
  // Without mu_: until it is `rank`'s turn or the run stopped.
  void awaitTurn(int rank);
  // Without mu_ or the GIL, on rank 0's thread: Python's signal handlers;
  // one that raised stops the run, and its error is thrown here.
  void runSignalHandlers();

  mutable std::mutex mu_;
  std::vector<c10::intrusive_ptr<Gate>> gates_;
  int n_;
  int current_ = -1;
  int ended_ = 0;
  std::vector<State> state_;
  std::vector<Wait> waiting_;  // by rank
  long waits_begun_ = 0;  // store waits so far, for Wait::since
  bool aborted_ = false;
  bool deadlocked_ = false;
  std::string reason_;
  // What every rank was doing when the run deadlocked (states(), waiting()).
  std::vector<int> dead_states_;
  std::vector<Waiting> dead_waiting_;
  std::function<void(int, int)> hook_;
  CpuRng caller_rng_;
  std::vector<CpuRng> rng_;  // each rank's, while another runs
};

// A collective's or point-to-point op's work in an exact world: complete
// once every member has issued it (or its peer has, for send/recv).
class ExactWork : public c10d::Work {
 public:
  ExactWork(
      c10::intrusive_ptr<Scheduler> scheduler,
      int global_rank,
      int slot,  // the rank's slot in the scheduler (NOTE [Hybrid worlds])
      c10d::OpType type,
      std::vector<at::Tensor> outputs,
      Waiting what,
      std::exception_ptr fault = nullptr);

  bool isCompleted() override;
  bool isSuccess() const override;
  std::exception_ptr exception() const override;
  std::vector<at::Tensor> result() override {
    return outputs_;
  }
  int sourceRank() const override;
  void synchronize() override {}
  bool wait(std::chrono::milliseconds timeout = kNoTimeout) override;
  // Waits for completion first (NOTE [Futures of exact work]).
  c10::intrusive_ptr<c10::ivalue::Future> getFuture() override;

  // By the exchange, when the op completes (with `error` if it failed).
  void finish(std::exception_ptr error, int source_rank = -1);
  // Work of a coalesced batch: complete when every part is.
  void addPart(c10::intrusive_ptr<ExactWork> part);
  bool done() const;
  // What a rank waiting on this work waits for (the first part not
  // complete, for a coalesced batch).
  Waiting what() const;
  // The error an injected fault deferred to wait() (outputs are not written).
  std::exception_ptr fault() const {
    return fault_;
  }

 private:
  c10::intrusive_ptr<Scheduler> scheduler_;
  int slot_;
  std::vector<at::Tensor> outputs_;
  Waiting what_;
  std::exception_ptr fault_;
  std::exception_ptr error_;
  bool done_ = false;
  int source_rank_ = -1;
  std::vector<c10::intrusive_ptr<ExactWork>> parts_;
};

// NOTE [Mismatches are worded in Python]
// Before it moves a byte, a real backend checks that its members' calls fit;
// so does an exchange (the same op, root, reduce op, dtype and sizes; a
// send's and its recv's sizes; all_to_all_single's splits), and a mismatch
// fails every member's work. The exchange only finds a mismatch: it hands
// Python the mismatch itself (which check, the group, the call's number,
// both members' parts; WorldState::setMismatchSource), and Python words it
// as the check across ranks words a divergence (checks/consistency.py), so
// there is one wording. Without a source, the error says only where.
struct Mismatch {
  enum class Kind : uint8_t { calls = 0, point_to_point = 1, splits = 2 };
  Kind kind;
  std::string group;                  // the group's name
  const std::vector<int64_t>* ranks;  // its global ranks; empty: every rank
  uint64_t seq;                       // its call, from 1; 0 point to point
  const Contribution* a;
  const Contribution* b;
};

// One group of an exact world as every member sees it: where the members'
// calls meet. Shared by the group's backends on every member rank.
class Exchange {
 public:
  Exchange(const WorldState& world, std::string name, std::vector<int64_t> ranks, int size)
      : world_(world), name_(std::move(name)), ranks_(std::move(ranks)), size_(size) {}

  // The `seq`-th collective of the group (from 1), issued by one member.
  void post(uint64_t seq, Contribution c);
  // Point to point: `c.rank` sends to / receives from a group rank (-1 for
  // any source on recv).
  void send(Contribution c, int dst);
  void recv(Contribution c, int src);

 private:
  struct Slot {
    std::vector<Contribution> members;  // in arrival order
  };
  void complete(uint64_t seq, std::vector<Contribution>& members);
  void match(Contribution& send, Contribution& recv);
  // The error of a mismatch found among the members' parts.
  std::exception_ptr error(
      Mismatch::Kind kind,
      uint64_t seq,
      const Contribution& a,
      const Contribution& b) const;

  const WorldState& world_;  // which owns the exchange
  std::string name_;
  std::vector<int64_t> ranks_;
  int size_;
  std::map<uint64_t, Slot> slots_;
  std::deque<Contribution> sends_;  // unmatched, in posting order
  std::deque<std::pair<Contribution, int>> recvs_;  // unmatched, with source
};

}  // namespace fakepg
