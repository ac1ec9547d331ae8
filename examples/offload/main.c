/* The README example: a coroutine runs a blocking call on the pool and reads its result on the loop. */
#define _POSIX_C_SOURCE 200809L
#include <evexec/evexec.h>
#include <stdio.h>
#include <time.h>

static evx_loop *loop;

static void slow_lookup(void *arg) { /* worker thread: may block */
  nanosleep(&(struct timespec){.tv_nsec = 100000000}, NULL); /* a slow library call */
  *(int *)arg = 42;
}

static void *lookup(void *pool) { /* a coroutine on the loop thread */
  int answer = 0;
  int status = evx_await_job(pool, slow_lookup, &answer); /* suspends; the loop runs on */
  printf("answer=%d status=%s\n", answer, evx_strerror(status));
  evx_loop_stop(loop);
  return NULL;
}

int main(void) {
  loop = evx_loop_new(NULL);
  evx_executor *pool = evx_executor_new(loop, &(evx_executor_opts){.threads = 4});
  evx_future *done = pool ? evx_go(loop, lookup, pool, NULL) : NULL;
  if (!done) return 1;
  evx_loop_run(loop);
  evx_future_release(done);
  evx_executor_free(pool);
  evx_loop_free(loop);
  return 0;
}
