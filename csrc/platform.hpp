// What an exact world needs of the operating system, in one place: a counting
// semaphore between threads, and the CPU placement of a hand-over (NOTE
// [Hand-overs stay on one CPU], exact.cpp). Linux gets the tuned versions
// (POSIX semaphores, sched_setaffinity, SCHED_BATCH); everywhere else, and on
// Linux when built with PYTEST_FAKEPG_PORTABLE=1 (-DFAKEPG_PORTABLE), the
// standard library's: a mutex and condition variable, and no placement.
// Chosen at compile time; both give the same results, the tuned one sooner.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

#if defined(__linux__) && !defined(FAKEPG_PORTABLE)
#define FAKEPG_PLATFORM_LINUX 1
#include <sched.h>
#include <semaphore.h>
#include <ctime>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#else
#define FAKEPG_PLATFORM_LINUX 0
#include <functional>
#include <thread>
#endif

namespace fakepg::platform {

// Which build this is, for bindings and tests: "linux" or "portable".
inline const char* name() {
  return FAKEPG_PLATFORM_LINUX ? "linux" : "portable";
}

// An id of the calling thread; 0 is never one.
inline uint64_t thisThread() {
#if FAKEPG_PLATFORM_LINUX
  thread_local const uint64_t tid = static_cast<uint64_t>(::syscall(SYS_gettid));
#else
  thread_local const uint64_t tid =
      std::hash<std::thread::id>{}(std::this_thread::get_id()) | 1;
#endif
  return tid;
}

// A counting semaphore: a post is never lost, whether or not anyone waits.
class Semaphore {
 public:
#if FAKEPG_PLATFORM_LINUX
  Semaphore() {
    sem_init(&sem_, 0, 0);
  }
  ~Semaphore() {
    sem_destroy(&sem_);
  }
  void post() {
    sem_post(&sem_);
  }
  // Waits for a post. With `interruptible`, returns false early when a
  // signal arrives or a tick (50 ms) passes, so the caller can run Python's
  // signal handlers: a process-directed signal (pytest-timeout's SIGALRM)
  // may interrupt another thread, which only flags it for the main one.
  bool wait(bool interruptible) {
    if (!interruptible) {
      while (sem_wait(&sem_) != 0) {
      }
      return true;
    }
    timespec until{};
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += 50 * 1000 * 1000;
    if (until.tv_nsec >= 1000 * 1000 * 1000) {
      until.tv_sec += 1;
      until.tv_nsec -= 1000 * 1000 * 1000;
    }
    return sem_timedwait(&sem_, &until) == 0;
  }
  bool tryWait() {
    return sem_trywait(&sem_) == 0;
  }

 private:
  sem_t sem_;
#else
  void post() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      ++count_;
    }
    cv_.notify_one();
  }
  // A condition variable is not woken by signals: an interruptible wait
  // returns false every tick instead, for the caller to run Python's signal
  // handlers and wait again.
  bool wait(bool interruptible) {
    std::unique_lock<std::mutex> lk(mu_);
    auto ready = [this] { return count_ > 0; };
    if (interruptible) {
      if (!cv_.wait_for(lk, std::chrono::milliseconds(50), ready)) {
        return false;
      }
    } else {
      cv_.wait(lk, ready);
    }
    --count_;
    return true;
  }
  bool tryWait() {
    std::lock_guard<std::mutex> lk(mu_);
    if (count_ == 0) {
      return false;
    }
    --count_;
    return true;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t count_ = 0;
#endif
};

// Where a woken thread runs: see NOTE [Hand-overs stay on one CPU]. Not
// thread-safe by itself (Gate guards it). A no-op in the portable build.
class Placement {
 public:
  // Holds thread `waiter` to the CPU the caller runs on, as SCHED_BATCH if
  // it was SCHED_OTHER; best effort.
  void narrow(uint64_t waiter) {
#if FAKEPG_PLATFORM_LINUX
    const auto tid = static_cast<pid_t>(waiter);
    const int cpu = sched_getcpu();
    if (narrowed_ || cpu < 0 ||
        sched_getaffinity(tid, sizeof(cpus_), &cpus_) != 0 ||
        !CPU_ISSET(cpu, &cpus_)) {
      return;
    }
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    narrowed_ = sched_setaffinity(tid, sizeof(one), &one) == 0;
    if (narrowed_ && sched_getscheduler(tid) == SCHED_OTHER) {
      const sched_param param{};
      batch_ = sched_setscheduler(tid, SCHED_BATCH, &param) == 0;
    }
#else
    (void)waiter;
#endif
  }

  // Undoes narrow() for `thread` (0: the calling thread).
  void restore(uint64_t thread) {
#if FAKEPG_PLATFORM_LINUX
    const auto tid = static_cast<pid_t>(thread);
    if (narrowed_) {
      narrowed_ = false;
      sched_setaffinity(tid, sizeof(cpus_), &cpus_);
    }
    if (batch_) {
      batch_ = false;
      const sched_param param{};
      sched_setscheduler(tid, SCHED_OTHER, &param);
    }
#else
    (void)thread;
#endif
  }

 private:
#if FAKEPG_PLATFORM_LINUX
  bool narrowed_ = false;  // the waiter held to one CPU; its own CPUs: cpus_
  bool batch_ = false;  // the waiter made SCHED_BATCH; it was SCHED_OTHER
  cpu_set_t cpus_{};
#endif
};

}  // namespace fakepg::platform
