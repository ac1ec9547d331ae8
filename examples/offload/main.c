/* The README example: run a blocking call on the pool, get the result on the loop. */
#define _POSIX_C_SOURCE 200809L
#include <evexec/evexec.h>
#include <stdio.h>
#include <time.h>

static evx_loop *loop;

static void slow_lookup(void *arg) { /* worker thread: may block */
  nanosleep(&(struct timespec){.tv_nsec = 100000000}, NULL); /* a slow library call */
  *(int *)arg = 42;
}

static void on_done(void *arg, int status) { /* loop thread */
  printf("answer=%d status=%s\n", *(int *)arg, evx_strerror(status));
  evx_loop_stop(loop);
}

int main(void) {
  static int answer;
  loop = evx_loop_new(NULL);
  evx_executor *pool = evx_executor_new(loop, &(evx_executor_opts){.threads = 4});
  if (!pool || evx_submit(pool, slow_lookup, on_done, &answer) != EVX_OK) return 1;
  evx_loop_run(loop);
  evx_executor_free(pool);
  evx_loop_free(loop);
  return 0;
}
