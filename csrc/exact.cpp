#include "exact.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/Exception.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <optional>

#include "compat.hpp"
#include "text.hpp"
#include "values.hpp"

namespace py = pybind11;

namespace fakepg {

// NOTE [Exact worlds]
// In an exact world (values="exact") the test's program runs once per rank,
// each rank on its own thread with its own torch.distributed state, one rank
// at a time (NOTE [The baton]). Every group's backends on its member ranks
// share an Exchange. A collective's call only deposits the member's tensors
// there and returns work; the member that completes the set computes the
// result from every member's inputs, writes every member's outputs and
// completes every member's work. A rank that waits on work not yet complete
// hands the baton on. Point to point, a send and a recv complete together
// when they match (same peers and tag, in posting order), as with NCCL and
// gloo, whose sends wait for the receiver.

// ---------------------------------------------------------------------------
// Gate and Scheduler

// NOTE [Hand-overs stay on one CPU]
// One rank runs at a time, so a run is a single line of work handed from
// thread to thread. Left to itself, the kernel wakes each thread on an idle
// CPU, often not the one whose caches the last rank just filled, and through
// a cross-CPU wake-up (an interrupt to a sleeping CPU: in a VM, an exit). So a
// hand-over wakes the next thread on the CPU it runs on:
//  - just before the gate opens, the sleeper's affinity is narrowed to this
//    CPU, and it is made SCHED_BATCH so that waking does not preempt the
//    thread that woke it, which is about to sleep (batch threads wait for the
//    next tick or a sleep; a normal one would preempt it, and the load
//    balancer would then move one of the two away);
//  - the woken thread puts its own affinity and policy back (settle()) before
//    it runs anything else, so it never runs code that could start threads or
//    processes (which inherit both) while narrowed.
// A trivial run of 4 ranks on a 2-CPU VM took about a fifth less time.
// Best effort: where a call fails, the thread wakes wherever the kernel puts
// it, as before. Threads whose policy is not SCHED_OTHER keep theirs.
// Linux only (platform.hpp): the portable build wakes threads wherever the
// scheduler puts them.

void Gate::open(bool here) {
  if (here) {
    std::lock_guard<std::mutex> lk(mu_);
    if (waiter_ != 0 && waiter_ != platform::thisThread()) {
      placement_.narrow(waiter_);
    }
  }
  sem_.post();
}

void Gate::settle() {
  std::lock_guard<std::mutex> lk(mu_);
  placement_.restore(0);
}

bool Gate::wait(bool interruptible) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    waiter_ = platform::thisThread();
  }
  const bool woken = sem_.wait(interruptible);
  settle();
  return woken;
}

void Gate::reset() {
  while (sem_.tryWait()) {
  }
  std::lock_guard<std::mutex> lk(mu_);
  placement_.restore(waiter_);  // a stale wake-up's narrowing
}

CpuRng CpuRng::current() {
  at::Generator gen = at::detail::getDefaultCPUGenerator();  // a handle
  std::lock_guard<std::mutex> lk(gen.mutex());
  auto* impl = gen.get<at::CPUGeneratorImpl>();
  return CpuRng{
      impl->engine(),
      impl->next_float_normal_sample(),
      impl->next_double_normal_sample()};
}

void CpuRng::install() const {
  at::Generator gen = at::detail::getDefaultCPUGenerator();  // a handle
  std::lock_guard<std::mutex> lk(gen.mutex());
  auto* impl = gen.get<at::CPUGeneratorImpl>();
  impl->set_engine(engine);
  impl->set_next_float_normal_sample(next_float);
  impl->set_next_double_normal_sample(next_double);
}

Scheduler::Scheduler(int world_size)
    : n_(world_size),
      state_(world_size, kNew),
      waiting_(world_size) {}

void Scheduler::wakeAll() {
  for (auto& gate : gates_) {
    gate->open();
  }
}

void Scheduler::awaitTurn(int rank) {
  while (true) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (aborted_ || current_ == rank) {
        break;
      }
    }
    // Rank 0 runs on the caller's thread, where Python runs its signal
    // handlers: NOTE [Signals in exact worlds].
    if (rank == 0) {
      if (!gates_[0]->wait(/*interruptible=*/true)) {
        runSignalHandlers();
      }
    } else {
      gates_[rank]->wait();
    }
  }
  // The baton may have come back before this thread slept: the hand-over
  // narrowed it all the same (NOTE [Hand-overs stay on one CPU]).
  gates_[rank]->settle();
}

// NOTE [Signals in exact worlds]
// Python runs signal handlers (Ctrl-C, pytest-timeout's alarm) on the main
// thread, between bytecodes. While rank 0 (the caller's thread) waits for its
// turn, it wakes every tick to run them; one that raises stops the run, and
// its exception is rank 0's, raised from the call it waited in. The rank
// holding the baton meanwhile may be running Python that never waits (a loop):
// the runner raises into its thread (exact/runner.py, stop()).
void Scheduler::runSignalHandlers() {
  py::gil_scoped_acquire gil;
  if (PyErr_CheckSignals() == 0) {
    return;
  }
  py::error_already_set raised;
  abort(cat("fakepg: a signal handler raised ",
            raised.type() ? std::string(py::str(raised.type().attr("__name__"))) : "an error",
            " in rank 0's thread, which stopped the exact world"));
  throw raised;
}

void Scheduler::start(std::vector<c10::intrusive_ptr<Gate>> gates) {
  TORCH_CHECK(
      static_cast<int>(gates.size()) == n_,
      cat("fakepg: a run of ", n_, " ranks needs ", n_, " gates, got ",
          gates.size()));
  std::lock_guard<std::mutex> lk(mu_);
  gates_ = std::move(gates);
  std::fill(state_.begin(), state_.end(), kNew);
  std::fill(waiting_.begin(), waiting_.end(), Wait{});
  current_ = 0;  // the caller runs rank 0
  ended_ = 0;
  caller_rng_ = CpuRng::current();
  rng_.assign(n_, caller_rng_);
  aborted_ = deadlocked_ = false;
  waits_begun_ = 0;
  reason_.clear();
  dead_states_.clear();
  dead_waiting_.clear();
  for (auto& gate : gates_) {
    gate->reset();  // wake-ups left over from a stopped run
  }
}

bool Scheduler::enter(int rank) {
  awaitTurn(rank);
  std::lock_guard<std::mutex> lk(mu_);
  if (aborted_) {
    state_[rank] = kDone;
    return false;
  }
  state_[rank] = kReady;
  return true;
}

void Scheduler::leave(int rank) {
  int next;
  {
    std::lock_guard<std::mutex> lk(mu_);
    state_[rank] = kDone;
    waiting_[rank] = Wait{};
    if (current_ != rank) {
      return;
    }
    next = pickNext(rank);
  }
  handTo(-1, next);
}

void Scheduler::ended(int rank) {
  std::lock_guard<std::mutex> lk(mu_);
  if (++ended_ == n_ && rank != 0) {
    gates_[0]->open(/*here=*/true);  // the caller waits in finish()
  }
}

bool Scheduler::finish() {
  while (true) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (ended_ == n_) {
        break;
      }
    }
    if (!gates_[0]->wait(/*interruptible=*/true)) {
      return false;
    }
  }
  gates_[0]->settle();  // woken by the last ended(), maybe before it slept
  return true;
}

void Scheduler::abort(const std::string& reason) {
  std::lock_guard<std::mutex> lk(mu_);
  if (!aborted_) {
    aborted_ = true;
    reason_ = reason;
  }
  current_ = -1;
  wakeAll();
}

bool Scheduler::deadlocked() const {
  std::lock_guard<std::mutex> lk(mu_);
  return deadlocked_;
}

std::vector<int> Scheduler::states() const {
  std::lock_guard<std::mutex> lk(mu_);
  if (deadlocked_) {
    return dead_states_;
  }
  return std::vector<int>(state_.begin(), state_.end());
}

std::vector<Waiting> Scheduler::waiting() const {
  std::lock_guard<std::mutex> lk(mu_);
  if (deadlocked_) {
    return dead_waiting_;
  }
  std::vector<Waiting> out;
  for (int r = 0; r < n_; ++r) {
    out.push_back(waitingFor(r));
  }
  return out;
}

Waiting Scheduler::waitingFor(int rank) const {
  const Wait& w = waiting_[rank];
  return w.work ? w.work->what() : w.what;
}

bool Scheduler::runnable(int rank) const {
  if (state_[rank] == kNew) {
    return true;
  }
  if (state_[rank] != kBlocked) {
    return false;
  }
  const Wait& w = waiting_[rank];
  return w.work ? w.work->done() : (w.timed_out || (w.ready && w.ready()));
}

// NOTE [A store wait times out]
// On a cluster, a store wait that no rank answers ends when its timeout runs
// out, with a DistStoreError the program may catch (a common fallback: try
// the key, carry on without it). In an exact world time does not pass while
// every rank waits, so when no rank can run and some wait on the store, the
// wait that began first times out at once: its rank runs again and raises
// the store's timeout error (exact/world.py), and the run goes on. Only when
// no rank waits on the store is "no rank can run" a deadlock.
int Scheduler::timeOutAStoreWait() {
  int first = -1;
  for (int r = 0; r < n_; ++r) {
    const Wait& w = waiting_[r];
    if (state_[r] == kBlocked && !w.work && w.ready &&
        (first < 0 || w.since < waiting_[first].since)) {
      first = r;
    }
  }
  if (first >= 0) {
    waiting_[first].timed_out = true;
  }
  return first;
}

int Scheduler::pickNext(int rank) {
  for (int k = 1; k <= n_; ++k) {
    const int r = (rank + k) % n_;
    if (runnable(r)) {
      return r;
    }
  }
  const int timed_out = timeOutAStoreWait();
  if (timed_out >= 0) {
    return timed_out;
  }
  current_ = -1;
  if (std::any_of(state_.begin(), state_.end(), [](State s) {
        return s != kDone;
      })) {
    dead_states_.assign(state_.begin(), state_.end());
    dead_waiting_.clear();
    for (int r = 0; r < n_; ++r) {
      dead_waiting_.push_back(waitingFor(r));
    }
    aborted_ = deadlocked_ = true;
    reason_ =
        "fakepg: deadlock in an exact world: no rank can run (each waits for "
        "a call another rank never makes)";
    wakeAll();
  }
  return -1;
}

void Scheduler::handTo(int from, int next) {
  if (next < 0) {
    return;
  }
  if (next != from) {
    // Still the only rank running: the process-wide state is swapped here,
    // once, before the next rank wakes.
    if (from >= 0) {
      rng_[from] = CpuRng::current();
    }
    rng_[next].install();
    if (hook_) {
      hook_(from, next);  // takes the GIL itself (bindings.cpp, switchHook)
    }
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (aborted_) {
      return;
    }
    current_ = next;
  }
  gates_[next]->open(/*here=*/true);
}

void Scheduler::throwIfAborted() const {
  if (aborted_) {
    std::rethrow_exception(distBackendError(reason_));
  }
}

void Scheduler::block(int rank, ExactWork* work) {
  // c10d releases the GIL around wait(); functional collectives' wait_tensor
  // may not. Either way the other ranks need it while this one waits.
  std::optional<py::gil_scoped_release> release;
  if (PyGILState_Check()) {
    release.emplace();
  }
  suspend(
      rank,
      Wait{work, nullptr, std::string()},
      "its work from a thread that is not running it (exact worlds run one "
      "rank at a time; wait on work in the rank's own program)");
}

bool Scheduler::blockUntil(
    int rank,
    std::function<bool()> ready,
    Waiting what) {
  return suspend(
      rank,
      Wait{nullptr, std::move(ready), std::move(what)},
      "the store from a thread that is not running it");
}

bool Scheduler::suspend(int rank, Wait wait, const char* on) {
  int next;
  {
    std::lock_guard<std::mutex> lk(mu_);
    throwIfAborted();
    TORCH_CHECK(
        current_ == rank,
        cat("fakepg: rank ", rank, " waited on ", on));
    if (!wait.work && wait.ready()) {
      return true;  // already there: no turn to give up
    }
    if (!wait.work) {
      wait.since = waits_begun_++;
    }
    state_[rank] = kBlocked;
    waiting_[rank] = std::move(wait);
    next = pickNext(rank);
  }
  if (next != rank) {
    handTo(rank, next);
  }
  awaitTurn(rank);
  std::lock_guard<std::mutex> lk(mu_);
  const bool timed_out = waiting_[rank].timed_out;
  waiting_[rank] = Wait{};
  throwIfAborted();
  state_[rank] = kReady;
  return !timed_out;
}

// ---------------------------------------------------------------------------
// ExactWork

ExactWork::ExactWork(
    c10::intrusive_ptr<Scheduler> scheduler,
    int global_rank,
    int slot,
    c10d::OpType type,
    std::vector<at::Tensor> outputs,
    Waiting what,
    std::exception_ptr fault)
    : c10d::Work(global_rank, type),
      scheduler_(std::move(scheduler)),
      slot_(slot),
      outputs_(std::move(outputs)),
      what_(std::move(what)),
      fault_(std::move(fault)) {}

bool ExactWork::done() const {
  return done_ &&
      std::all_of(parts_.begin(), parts_.end(), [](const auto& p) {
           return p->done();
         });
}

bool ExactWork::isCompleted() {
  return done();
}

bool ExactWork::isSuccess() const {
  return done() && !exception();
}

std::exception_ptr ExactWork::exception() const {
  if (error_) {
    return error_;
  }
  for (const auto& p : parts_) {
    if (auto e = p->exception()) {
      return e;
    }
  }
  return nullptr;
}

int ExactWork::sourceRank() const {
  TORCH_CHECK(
      source_rank_ >= 0,
      "sourceRank() may only be called on work objects that correspond to a "
      "recv-from-any call");
  return source_rank_;
}

void ExactWork::finish(std::exception_ptr error, int source_rank) {
  error_ = error ? std::move(error) : fault_;
  source_rank_ = source_rank;
  done_ = true;
}

Waiting ExactWork::what() const {
  for (const auto& p : parts_) {
    if (!p->done()) {
      return p->what();
    }
  }
  return what_;
}

void ExactWork::addPart(c10::intrusive_ptr<ExactWork> part) {
  parts_.push_back(std::move(part));
}

bool ExactWork::wait(std::chrono::milliseconds /* timeout */) {
  if (!done()) {
    scheduler_->block(slot_, this);
  }
  if (auto e = exception()) {
    std::rethrow_exception(e);
  }
  return true;
}

// NOTE [Futures of exact work]
// A future completes on its own, with no one calling wait(): DDP waits on
// its buckets' futures from C++, where no rank could hand the baton on. So
// getFuture() first waits for the work (running the other ranks), and
// returns a completed future.
c10::intrusive_ptr<c10::ivalue::Future> ExactWork::getFuture() {
  std::exception_ptr error;
  try {
    wait();
  } catch (...) {
    error = std::current_exception();
  }
  return completedFuture(outputs_, error);
}

c10::intrusive_ptr<c10::ivalue::Future> completedFuture(
    const std::vector<at::Tensor>& outputs,
    std::exception_ptr error) {
  std::vector<c10::Device> devices;
  for (const auto& t : outputs) {
    if (!t.is_cpu() && std::find(devices.begin(), devices.end(), t.device()) ==
                           devices.end()) {
      devices.push_back(t.device());
    }
  }
  auto fut = c10::make_intrusive<c10::ivalue::Future>(
      c10::ListType::create(c10::TensorType::get()), std::move(devices));
  if (error) {
    fut->setError(error);
  } else {
    fut->markCompleted(c10::IValue(outputs));
  }
  return fut;
}

// ---------------------------------------------------------------------------
// Exchange

namespace {

using RedOp = c10d::ReduceOp::RedOpType;

at::Tensor flatOf(const at::Tensor& t) {
  return t.reshape({-1});
}

// The reduction of `ts` (equal numel) under `op`, as a new contiguous tensor.
at::Tensor reduceExact(
    const std::vector<at::Tensor>& ts,
    const c10d::ReduceOp& op) {
  at::Tensor acc = flatOf(ts[0]).clone();
  const auto n = static_cast<int64_t>(ts.size());
  for (int64_t i = 1; i < n; ++i) {
    const auto x = flatOf(ts[i]);
    switch (op.op_) {
      case RedOp::SUM:
      case RedOp::AVG:
      case RedOp::PREMUL_SUM:
        acc.add_(x);
        break;
      case RedOp::PRODUCT:
        acc.mul_(x);
        break;
      case RedOp::MIN:
        acc = at::minimum(acc, x);
        break;
      case RedOp::MAX:
        acc = at::maximum(acc, x);
        break;
      case RedOp::BAND:
        acc.bitwise_and_(x);
        break;
      case RedOp::BOR:
        acc.bitwise_or_(x);
        break;
      case RedOp::BXOR:
        acc.bitwise_xor_(x);
        break;
      default:
        TORCH_CHECK(
            false,
            cat("fakepg: unsupported reduce op ", static_cast<int>(op.op_)));
    }
  }
  if (op.op_ == RedOp::AVG) {
    if (at::isFloatingType(acc.scalar_type()) ||
        at::isComplexType(acc.scalar_type())) {
      acc.div_(n);
    } else {
      acc.div_(n, "trunc");
    }
  } else if (op.op_ == RedOp::PREMUL_SUM) {
    auto* sup =
        dynamic_cast<compat::PreMulSumSupplement*>(op.supplement_.get());
    TORCH_CHECK(sup, "fakepg: PREMUL_SUM without a scaling factor");
    if (sup->tensor_factor.defined()) {
      acc.mul_(sup->tensor_factor.to(acc.device()));
    } else {
      acc.mul_(sup->double_factor);
    }
  }
  return acc;
}

void synchronizeIfDevice(const std::vector<Contribution>& members) {
  for (const auto& m : members) {
    for (const auto* list : {&m.in, &m.out}) {
      for (const auto& t : *list) {
        if (t.defined() && !t.is_cpu() && !t.is_meta()) {
          // One GPU serves every rank, each on its own thread and streams:
          // the inputs must be ready before they are read, and the outputs
          // written before any rank reads them.
          c10::impl::VirtualGuardImpl impl(t.device().type());
          impl.synchronizeDevice(t.device().index());
          return;
        }
      }
    }
  }
}

// The part's work: ExactSemantics gives every part an ExactWork.
ExactWork& workOf(const Contribution& c) {
  return static_cast<ExactWork&>(*c.work);
}

// Every member's inputs, copied: an output may be (a view of) an input, as
// when FSDP2 all-gathers in place.
std::vector<std::vector<at::Tensor>> stagedInputs(
    const std::vector<Contribution>& members) {
  std::vector<std::vector<at::Tensor>> staged(members.size());
  for (size_t j = 0; j < members.size(); ++j) {
    for (const auto& t : members[j].in) {
      staged[j].push_back(t.clone());
    }
  }
  return staged;
}

}  // namespace

void Exchange::post(uint64_t seq, Contribution c) {
  if (size_ == 1) {
    std::vector<Contribution> members;
    members.push_back(std::move(c));
    complete(seq, members);
    return;
  }
  auto& slot = slots_[seq];
  slot.members.push_back(std::move(c));
  if (static_cast<int>(slot.members.size()) == size_) {
    auto members = std::move(slot.members);
    slots_.erase(seq);
    complete(seq, members);
  }
}

namespace {

// The check every real backend makes before it moves a byte: the same op,
// root, reduce op and dtype everywhere, sizes that fit and, for
// all_to_all_single, splits that agree. The members that differ, or none.
struct Found {
  Mismatch::Kind kind;
  size_t a;
  size_t b;
};

std::optional<Found> findMismatch(const std::vector<Contribution>& m) {
  const auto& a = m[0];
  for (size_t i = 1; i < m.size(); ++i) {
    const auto& b = m[i];
    bool differ = a.op != b.op || a.root != b.root ||
        (a.reduces && a.reduce.op_ != b.reduce.op_) ||
        (!a.in.empty() && !b.in.empty() &&
         a.in[0].scalar_type() != b.in[0].scalar_type()) ||
        (a.in.size() != b.in.size() && a.op != Op::scatter);
    for (size_t k = 0; !differ && opHas(a.op, kSameShapes) && k < a.in.size(); ++k) {
      differ = a.in[k].numel() != b.in[k].numel();
    }
    if (differ) {
      return Found{Mismatch::Kind::calls, 0, i};
    }
  }
  if (a.op == Op::all_to_all_single) {
    // Member i's output split j must be member j's input split i.
    for (size_t i = 0; i < m.size(); ++i) {
      for (size_t j = 0; j < m.size(); ++j) {
        if (m[i].splitRows(false, j) != m[j].splitRows(true, i)) {
          return Found{Mismatch::Kind::splits, i, j};
        }
      }
    }
  }
  return std::nullopt;
}

}  // namespace

std::exception_ptr Exchange::error(
    Mismatch::Kind kind,
    uint64_t seq,
    const Contribution& a,
    const Contribution& b) const {
  return distBackendError(
      world_.mismatchText(Mismatch{kind, name_, &ranks_, seq, &a, &b}));
}

// ---------------------------------------------------------------------------
// What a complete collective writes: one function per op, given every
// member's part (by group rank; m[i].out is member i's outputs), the group's
// size and whether member i's outputs are written (not when a fault fired on
// it: NOTE [Writing outputs], values.cpp). Run under
// AutoDispatchBelowAutograd.

namespace {

using Writes = std::vector<bool>;
using ExactOp = void (*)(std::vector<Contribution>& m, int n, const Writes& writes);

void allReduce(std::vector<Contribution>& m, int n, const Writes& writes) {
  const auto& first = m[0];
  for (size_t k = 0; k < first.in.size(); ++k) {
    std::vector<at::Tensor> xs;
    for (const auto& c : m) {
      xs.push_back(c.in[k]);
    }
    const auto r = reduceExact(xs, first.reduce);
    for (int i = 0; i < n; ++i) {
      if (writes[i]) {
        copyFlat(m[i].out[k], r);
      }
    }
  }
}

void reduce(std::vector<Contribution>& m, int /* n */, const Writes& writes) {
  const auto& first = m[0];
  std::vector<at::Tensor> xs;
  for (const auto& c : m) {
    xs.push_back(c.in[0]);
  }
  const auto r = reduceExact(xs, first.reduce);
  if (writes[first.root]) {
    copyFlat(m[first.root].out[0], r);
  }
}

void broadcast(std::vector<Contribution>& m, int n, const Writes& writes) {
  const auto& first = m[0];
  for (size_t k = 0; k < first.in.size(); ++k) {
    const auto& src = m[first.root].in[k];
    for (int i = 0; i < n; ++i) {
      if (i != first.root && writes[i]) {
        copyFlat(m[i].out[k], src);
      }
    }
  }
}

void allGather(std::vector<Contribution>& m, int n, const Writes& writes) {
  const auto& first = m[0];
  // Output j (of each input k) of a receiving member is member j's
  // input k; outputs are laid out [j * inputs + k].
  const auto staged = stagedInputs(m);
  for (int i = 0; i < n; ++i) {
    if (!writes[i] || m[i].out.empty()) {
      continue;
    }
    const size_t per = first.in.size();
    for (int j = 0; j < n; ++j) {
      for (size_t k = 0; k < per; ++k) {
        copyFlat(m[i].out[j * per + k], staged[j][k]);
      }
    }
  }
}

void allGatherIntoTensor(std::vector<Contribution>& m, int n, const Writes& writes) {
  const auto& first = m[0];
  for (size_t k = 0; k < first.in.size(); ++k) {
    std::vector<at::Tensor> xs;
    for (const auto& c : m) {
      xs.push_back(flatOf(c.in[k]));
    }
    const auto all = at::cat(xs);
    for (int i = 0; i < n; ++i) {
      if (writes[i]) {
        copyFlat(m[i].out[k], all);
      }
    }
  }
}

void gatherIntoTensor(std::vector<Contribution>& m, int /* n */, const Writes& writes) {
  const auto& first = m[0];
  std::vector<at::Tensor> xs;
  for (const auto& c : m) {
    xs.push_back(flatOf(c.in[0]));
  }
  if (writes[first.root]) {
    copyFlat(m[first.root].out.at(0), at::cat(xs));
  }
}

void scatter(std::vector<Contribution>& m, int n, const Writes& writes) {
  const auto& first = m[0];
  const auto staged = stagedInputs(m);  // only the root has inputs
  for (int i = 0; i < n; ++i) {
    if (writes[i]) {
      copyFlat(m[i].out[0], staged[first.root].at(i));
    }
  }
}

void reduceScatter(std::vector<Contribution>& m, int n, const Writes& writes) {
  const auto& first = m[0];
  // in is laid out [k * n + r]: input list k, chunk for rank r.
  const size_t lists = first.out.size();
  std::vector<std::vector<at::Tensor>> results(n);
  for (int i = 0; i < n; ++i) {
    for (size_t k = 0; k < lists; ++k) {
      std::vector<at::Tensor> xs;
      for (const auto& c : m) {
        xs.push_back(c.in.at(k * n + i));
      }
      results[i].push_back(reduceExact(xs, first.reduce));
    }
  }
  for (int i = 0; i < n; ++i) {
    for (size_t k = 0; writes[i] && k < lists; ++k) {
      copyFlat(m[i].out[k], results[i][k]);
    }
  }
}

void reduceScatterTensor(std::vector<Contribution>& m, int n, const Writes& writes) {
  const auto& first = m[0];
  std::vector<std::vector<at::Tensor>> results(n);
  for (size_t k = 0; k < first.in.size(); ++k) {
    std::vector<at::Tensor> xs;
    for (const auto& c : m) {
      xs.push_back(c.in[k]);
    }
    const auto r = reduceExact(xs, first.reduce);
    const auto chunk = r.numel() / n;
    for (int i = 0; i < n; ++i) {
      results[i].push_back(r.narrow(0, i * chunk, chunk));
    }
  }
  for (int i = 0; i < n; ++i) {
    for (size_t k = 0; writes[i] && k < first.in.size(); ++k) {
      copyFlat(m[i].out[k], results[i][k]);
    }
  }
}

void allToAllSingle(std::vector<Contribution>& m, int n, const Writes& writes) {
  std::vector<std::vector<at::Tensor>> pieces(n);
  for (int j = 0; j < n; ++j) {
    const auto& in = m[j].in[0];
    int64_t off = 0;
    for (int i = 0; i < n; ++i) {
      const auto rows = m[j].splitRows(true, i);
      pieces[j].push_back(
          in.dim() ? in.narrow(0, off, rows).clone() : in.clone());
      off += rows;
    }
  }
  for (int i = 0; i < n; ++i) {
    if (!writes[i]) {
      continue;
    }
    const auto& out = m[i].out[0];
    int64_t off = 0;
    for (int j = 0; j < n; ++j) {
      const auto rows = m[i].splitRows(false, j);
      if (out.dim()) {
        out.narrow(0, off, rows).copy_(pieces[j][i]);
      } else {
        out.copy_(pieces[j][i]);
      }
      off += rows;
    }
  }
}

void allToAll(std::vector<Contribution>& m, int n, const Writes& writes) {
  const auto staged = stagedInputs(m);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; writes[i] && j < n; ++j) {
      copyFlat(m[i].out[j], staged[j][i]);
    }
  }
}

void nothing(std::vector<Contribution>& /* m */, int /* n */, const Writes& /* writes */) {}

ExactOp exactOp(Op op) {
  switch (op) {
    case Op::all_reduce:
    case Op::all_reduce_coalesced:
      return allReduce;
    case Op::reduce:
      return reduce;
    case Op::broadcast:
      return broadcast;
    case Op::all_gather:
    case Op::all_gather_coalesced:
    case Op::gather:
      return allGather;
    case Op::all_gather_into_tensor:
    case Op::all_gather_into_tensor_coalesced:
      return allGatherIntoTensor;
    case Op::gather_into_tensor:
      return gatherIntoTensor;
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
    case Op::send:  // matched pairwise: Exchange::match
    case Op::recv:
    case Op::barrier:
    case Op::kCount:
      break;
  }
  return nothing;
}

}  // namespace

void Exchange::complete(uint64_t seq, std::vector<Contribution>& m) {
  std::sort(m.begin(), m.end(), [](const auto& a, const auto& b) {
    return a.rank < b.rank;
  });
  std::exception_ptr error;
  if (auto found = findMismatch(m)) {
    error = this->error(found->kind, seq, m[found->a], m[found->b]);
  } else {
    try {
      at::AutoDispatchBelowAutograd guard;
      synchronizeIfDevice(m);
      Writes writes(m.size());
      for (size_t i = 0; i < m.size(); ++i) {
        writes[i] = !workOf(m[i]).fault();
      }
      exactOp(m[0].op)(m, size_, writes);
      synchronizeIfDevice(m);
    } catch (...) {
      error = std::current_exception();
    }
  }
  for (auto& c : m) {
    workOf(c).finish(error);
  }
}

void Exchange::match(Contribution& s, Contribution& r) {
  std::exception_ptr error;
  const auto& src = s.in.at(0);
  const auto& dst = r.out.at(0);
  // On fake tensors (meta here) the shapes are all there is to check: a
  // recv of another shape than the send is a plan's bug, where with values a
  // copy of the same number of elements may be meant. Dimensions of size 1
  // do not count: torch's own pipelining sends a 0-d tensor into a recv of
  // shape [1].
  const auto squeezed = [](const at::Tensor& t) {
    std::vector<int64_t> out;
    for (auto d : t.sizes()) {
      if (d != 1) {
        out.push_back(d);
      }
    }
    return out;
  };
  const bool shapes =
      (src.is_meta() || dst.is_meta()) && squeezed(src) != squeezed(dst);
  if (src.numel() != dst.numel() || src.scalar_type() != dst.scalar_type() || shapes) {
    error = this->error(Mismatch::Kind::point_to_point, 0, s, r);
  } else if (!workOf(r).fault() && !workOf(s).fault()) {
    at::AutoDispatchBelowAutograd guard;
    std::vector<Contribution> both{s, r};
    synchronizeIfDevice(both);
    copyFlat(dst, src);
    synchronizeIfDevice(both);
  }
  workOf(s).finish(error);
  workOf(r).finish(error, s.rank);
}

void Exchange::send(Contribution c, int dst) {
  c.root = dst;
  for (auto it = recvs_.begin(); it != recvs_.end(); ++it) {
    auto& [r, src] = *it;
    if (r.rank == dst && (src == c.rank || src < 0) && r.tag == c.tag) {
      auto recv = std::move(r);
      recvs_.erase(it);
      match(c, recv);
      return;
    }
  }
  sends_.push_back(std::move(c));
}

void Exchange::recv(Contribution c, int src) {
  c.root = src;
  for (auto it = sends_.begin(); it != sends_.end(); ++it) {
    if (it->root == c.rank && (src < 0 || it->rank == src) &&
        it->tag == c.tag) {
      auto send = std::move(*it);
      sends_.erase(it);
      match(send, c);
      return;
    }
  }
  recvs_.emplace_back(std::move(c), src);
}

// ---------------------------------------------------------------------------
// Exact semantics: a member's part goes to its group's exchange.

namespace {

class ExactSemantics final : public Semantics {
 public:
  ExactSemantics(
      c10::intrusive_ptr<WorldState> world,
      std::shared_ptr<Exchange> exchange,
      std::string group_name,
      int global_rank)
      : world_(std::move(world)),
        exchange_(std::move(exchange)),
        group_name_(std::move(group_name)),
        global_rank_(global_rank),
        slot_(world_->runSlot(global_rank)) {}

  void check(const Contribution& c) const override {
    for (const auto* list : {&c.in, &c.out}) {
      for (const auto& t : *list) {
        TORCH_CHECK(
            t.layout() == at::kStrided,
            cat("fakepg: sparse ",
                opName(c.op),
                " has no exact values yet; use dense tensors or "
                "values='uniform'"));
      }
    }
  }

  int anySource() const override {
    return -1;  // the sender it matches says
  }

  c10::intrusive_ptr<c10d::Work> issue(
      Contribution c,
      c10d::OpType type,
      Results results,
      std::exception_ptr fault) override {
    auto work = c10::make_intrusive<ExactWork>(
        world_->scheduler(),
        global_rank_,
        slot_,
        type,
        results ? std::move(*results) : c.out,
        Waiting{opName(c.op), group_name_, world_->lastSite()},
        std::move(fault));
    if (coalescing_) {
      coalesced_.push_back(work);
    }
    c.work = work;
    const int peer = c.peer;
    if (c.op == Op::send) {
      exchange_->send(std::move(c), peer);
    } else if (c.op == Op::recv) {
      exchange_->recv(std::move(c), peer);
    } else {
      exchange_->post(++collectives_, std::move(c));
    }
    return work;
  }

  void startCoalescing() override {
    coalescing_ = true;
    coalesced_.clear();
  }

  // Complete when every op issued since startCoalescing() is.
  c10::intrusive_ptr<c10d::Work> endCoalescing() override {
    coalescing_ = false;
    auto work = c10::make_intrusive<ExactWork>(
        world_->scheduler(),
        global_rank_,
        slot_,
        c10d::OpType::COALESCED,
        std::vector<at::Tensor>{},
        Waiting{},
        nullptr);
    work->finish(nullptr);
    for (auto& part : coalesced_) {
      work->addPart(std::move(part));
    }
    coalesced_.clear();
    return work;
  }

 private:
  c10::intrusive_ptr<WorldState> world_;
  std::shared_ptr<Exchange> exchange_;
  std::string group_name_;
  int global_rank_;
  int slot_;  // in the scheduler (NOTE [Hybrid worlds])
  uint64_t collectives_ = 0;  // collectives posted to exchange_
  bool coalescing_ = false;
  std::vector<c10::intrusive_ptr<ExactWork>> coalesced_;
};

}  // namespace

std::unique_ptr<Semantics> exactSemantics(
    c10::intrusive_ptr<WorldState> world,
    std::shared_ptr<Exchange> exchange,
    std::string group_name,
    int global_rank) {
  return std::make_unique<ExactSemantics>(
      std::move(world),
      std::move(exchange),
      std::move(group_name),
      global_rank);
}

}  // namespace fakepg
