// When does a waiter wake after a holder process lets go of a flock(2) lock?
//
// A fresh holder process takes the lock, sleeps 5-75 ms, reads
// CLOCK_MONOTONIC, then lets go by LOCK_UN + close ("u", as a flockguard
// guard's drop does) or by close alone ("c"). The waiter, which has waited
// all that time, is either blocked in flock(2) ("b") or sleeps in
// epoll_wait(2) on an inotify close watch of the file ("e"), then tries
// LOCK_NB until it has the lock. Printed: medians, in microseconds from
// just before the release, of when the waiter woke and took the lock, and
// of when the holder's LOCK_UN and close returned.
//
//   gcc -O2 -o release_wake benches/probes/release_wake.c
//   ./release_wake b u 41; ./release_wake e u 41; ./release_wake b c 41; ./release_wake e c 41
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
  long long x = *(const long long *)a, y = *(const long long *)b;
  return (x > y) - (x < y);
}

static double median_us(long long *v, int n) {
  qsort(v, n, sizeof *v, by_value);
  return v[n / 2] / 1e3;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s b|e u|c ROUNDS\n", argv[0]);
    return 2;
  }
  char waiter = argv[1][0], release = argv[2][0];
  int rounds = atoi(argv[3]);
  if (rounds < 1 || rounds > 1000) return 2;
  char path[] = "/tmp/release_wake.lock";
  close(open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600));
  long long *woke = calloc(rounds, 8), *took = calloc(rounds, 8);
  long long *unlocked = calloc(rounds, 8), *closed = calloc(rounds, 8);
  for (int r = 0; r < rounds; r++) {
    int times[2], ready[2];
    if (pipe(times) || pipe(ready)) return 1;
    pid_t holder = fork();
    if (holder == 0) {
      int fd = open(path, O_RDWR | O_CLOEXEC);
      flock(fd, LOCK_EX);
      if (write(ready[1], "x", 1) != 1) _exit(1);
      usleep(5000 + (r * 7919) % 70000);
      long long t[3];
      t[0] = now_ns();
      if (release == 'u') flock(fd, LOCK_UN);
      t[1] = now_ns();
      close(fd);
      t[2] = now_ns();
      if (write(times[1], t, sizeof t) != sizeof t) _exit(1);
      _exit(0);
    }
    char x;
    if (read(ready[0], &x, 1) != 1) return 1;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    int in = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    char watched[64];
    snprintf(watched, sizeof watched, "/proc/self/fd/%d", fd);
    inotify_add_watch(in, watched, IN_CLOSE_WRITE | IN_CLOSE_NOWRITE);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN};
    epoll_ctl(ep, EPOLL_CTL_ADD, in, &ev);
    long long t_woke;
    if (waiter == 'b') {
      flock(fd, LOCK_EX);
      t_woke = now_ns();
    } else {
      struct epoll_event out;
      epoll_wait(ep, &out, 1, -1);
      t_woke = now_ns();
      char buf[4096];
      while (read(in, buf, sizeof buf) > 0) {
      }
    }
    while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    }
    long long t_took = now_ns(), t[3];
    if (read(times[0], t, sizeof t) != sizeof t) return 1;
    woke[r] = t_woke - t[0];
    took[r] = t_took - t[0];
    unlocked[r] = t[1] - t[0];
    closed[r] = t[2] - t[0];
    close(fd);
    close(in);
    close(ep);
    waitpid(holder, NULL, 0);
    close(times[0]);
    close(times[1]);
    close(ready[0]);
    close(ready[1]);
  }
  printf("waiter %c, release %c: woke %.1f, took the lock %.1f, LOCK_UN returned %.1f, "
         "close returned %.1f (µs, median of %d)\n",
         waiter, release, median_us(woke, rounds), median_us(took, rounds),
         median_us(unlocked, rounds), median_us(closed, rounds), rounds);
  unlink(path);
  return 0;
}
