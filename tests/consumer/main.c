/* An out-of-tree consumer of an installed evexec (built by
 * scripts/install-check.sh with pkg-config and with find_package). It uses
 * only the names DESIGN.md promises: a loop, an executor, submit, done, stop.
 * Exit status 0 and the line "consumer: ok" mean the installed library works. */
#include <evexec/evexec.h>

#include <stdio.h>

typedef struct job {
  evx_loop *loop;
  long n;
  long sum;      /* written by work on a worker thread */
  int status;    /* written by done on the loop thread */
  int done_calls;
} job;

/* Worker thread: the "blocking" part. */
static void work(void *arg) {
  job *j = arg;
  long s = 0;
  for (long i = 1; i <= j->n; i++) s += i;
  j->sum = s;
}

/* Loop thread: the result is back; stop the loop. */
static void done(void *arg, int status) {
  job *j = arg;
  j->status = status;
  j->done_calls++;
  evx_loop_stop(j->loop);
}

int main(void) {
  evx_loop *loop = evx_loop_new(NULL);
  if (!loop) {
    fprintf(stderr, "consumer: evx_loop_new failed\n");
    return 1;
  }
  evx_executor_opts opts = {.threads = 2, .max_queue = 8, .name = "consumer"};
  evx_executor *ex = evx_executor_new(loop, &opts);
  if (!ex) {
    fprintf(stderr, "consumer: evx_executor_new failed\n");
    evx_loop_free(loop);
    return 1;
  }
  job j = {.loop = loop, .n = 1000, .status = 1};
  int rc = evx_submit(ex, work, done, &j);
  if (rc != EVX_OK) {
    fprintf(stderr, "consumer: evx_submit: %s\n", evx_strerror(rc));
    return 1;
  }
  rc = evx_loop_run(loop);
  evx_executor_free(ex);
  evx_loop_free(loop);
  if (rc != EVX_OK || j.done_calls != 1 || j.status != EVX_OK || j.sum != 500500) {
    fprintf(stderr, "consumer: wrong outcome: run=%s done_calls=%d status=%s sum=%ld\n",
            evx_err_name(rc), j.done_calls, evx_err_name(j.status), j.sum);
    return 1;
  }
  printf("consumer: ok (evexec %d.%d.%d, sum=%ld)\n", EVX_VERSION_MAJOR, EVX_VERSION_MINOR,
         EVX_VERSION_PATCH, j.sum);
  return 0;
}
