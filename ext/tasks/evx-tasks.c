/*
 * evx-tasks: operate a task queue from the shell - counts, and the
 * dead-letter store (list, retry, purge). Opens the queue as a producer
 * (it never leases), so it is safe next to running workers.
 *
 *   evx-tasks [--queue NAME] URL stats
 *   evx-tasks [--queue NAME] URL list [LIMIT]
 *   evx-tasks [--queue NAME] URL retry ID|--all
 *   evx-tasks [--queue NAME] URL purge ID|--all
 *
 * Exit status: 0 done, 1 the queue failed, 2 bad usage.
 */
#include <evexec/evexec.h>
#include <evexec/tasks.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void usage(FILE *f) {
  fprintf(f,
          "usage: evx-tasks [--queue NAME] URL COMMAND\n"
          "  URL      sqlite:PATH (or redis://HOST:PORT/DB when built with Redis)\n"
          "commands:\n"
          "  stats           ready, delayed, leased and dead counts\n"
          "  list [LIMIT]    dead tasks, oldest first (default 100)\n"
          "  retry ID|--all  move dead task(s) back to ready, attempts reset\n"
          "  purge ID|--all  delete dead task(s) and forget their idempotency keys\n");
}

typedef struct run_state {
  evx_loop *loop;
  int status;
} run_state;

static void on_done(evx_future *f, void *arg) {
  (void)f;
  run_state *st = arg;
  evx_loop_stop(st->loop);
}

/* Run the loop until f is done; returns its status. */
static int wait_for(evx_loop *loop, evx_future *f) {
  if (!f) return EVX_ENOMEM;
  run_state st = {loop, 0};
  if (!evx_future_is_done(f)) {
    if (evx_future_on_done(f, on_done, &st) != EVX_OK) return EVX_ENOMEM;
    evx_loop_run(loop);
  }
  return evx_future_status(f);
}

static void print_time(int64_t ms) {
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  char buf[32];
  gmtime_r(&t, &tm);
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  printf("%s.%03dZ", buf, (int)(ms % 1000));
}

static void print_bytes(const void *p, size_t len) {
  const unsigned char *s = p;
  size_t n = len > 60 ? 60 : len;
  putchar('"');
  for (size_t i = 0; i < n; i++) {
    if (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"' && s[i] != '\\')
      putchar(s[i]);
    else
      printf("\\x%02x", s[i]);
  }
  putchar('"');
  if (n < len) printf("...(%zu bytes)", len);
}

static int cmd_list(evx_loop *loop, evx_tasks *q, size_t limit) {
  evx_future *f = evx_tasks_dead_list(q, limit);
  int rc = wait_for(loop, f);
  if (rc == EVX_OK) {
    evx_task_list *l = evx_future_result(f);
    for (size_t i = 0; i < l->n; i++) {
      evx_task_info *it = &l->items[i];
      printf("%s\t%s\tattempts=%u\tenqueued=", it->id, it->name ? it->name : "?", it->attempts);
      print_time(it->enqueued_ms);
      printf("\tdied=");
      print_time(it->died_ms);
      printf("\tkey=%s\tpayload=", it->key ? it->key : "-");
      print_bytes(it->payload, it->len);
      printf("\terror=%s\n", it->last_error ? it->last_error : "-");
    }
    fprintf(stderr, "%zu dead task(s)\n", l->n);
  }
  evx_future_release(f);
  return rc;
}

static int cmd_change(evx_loop *loop, evx_tasks *q, int retry, const char *id) {
  evx_future *f = retry ? evx_tasks_dead_retry(q, id) : evx_tasks_dead_purge(q, id);
  int rc = wait_for(loop, f);
  if (rc == EVX_OK) {
    uint64_t *n = evx_future_result(f);
    printf("%s %llu task(s)\n", retry ? "retried" : "purged", (unsigned long long)*n);
  }
  evx_future_release(f);
  return rc;
}

static void stats_tick(void *arg) {
  run_state *st = arg;
  evx_loop_stop(st->loop);
}

static int cmd_stats(evx_loop *loop, evx_tasks *q) {
  /* The queue counts itself right after open; give it a moment. */
  run_state st = {loop, 0};
  evx_tasks_stats s;
  for (int i = 0; i < 50; i++) {
    evx_call_later(loop, 20, stats_tick, &st);
    evx_loop_run(loop);
    evx_tasks_stats_get(q, &s);
    if (s.ready + s.delayed + s.leased + s.dead > 0 || i >= 5) break;
  }
  printf("queue=%s ready=%llu delayed=%llu leased=%llu dead=%llu\n", evx_tasks_queue_name(q),
         (unsigned long long)s.ready, (unsigned long long)s.delayed,
         (unsigned long long)s.leased, (unsigned long long)s.dead);
  return EVX_OK;
}

int main(int argc, char **argv) {
  const char *queue = NULL;
  int i = 1;
  if (i < argc && (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)) {
    usage(stdout);
    return 0;
  }
  if (i + 1 < argc && strcmp(argv[i], "--queue") == 0) {
    queue = argv[i + 1];
    i += 2;
  }
  if (argc - i < 2) {
    usage(stderr);
    return 2;
  }
  const char *url = argv[i], *cmd = argv[i + 1];
  const char *arg = i + 2 < argc ? argv[i + 2] : NULL;
  if (i + 3 < argc) {
    usage(stderr);
    return 2;
  }
  size_t limit = 100;
  if (strcmp(cmd, "list") == 0 && arg) {
    char *end;
    long long v = strtoll(arg, &end, 10);
    if (*end || v <= 0) {
      fprintf(stderr, "evx-tasks: LIMIT must be a positive number\n");
      return 2;
    }
    limit = (size_t)v;
  } else if ((strcmp(cmd, "retry") == 0 || strcmp(cmd, "purge") == 0)) {
    if (!arg) {
      fprintf(stderr, "evx-tasks: %s needs a task id or --all\n", cmd);
      return 2;
    }
  } else if (strcmp(cmd, "stats") != 0 && strcmp(cmd, "list") != 0) {
    fprintf(stderr, "evx-tasks: unknown command \"%s\"\n", cmd);
    usage(stderr);
    return 2;
  }

  evx_loop *loop = evx_loop_new(NULL);
  if (!loop) return 1;
  evx_tasks_opts o = {.queue = queue, .role = EVX_TASKS_ROLE_PRODUCER};
  evx_tasks *q = NULL;
  char *msg = NULL;
  int rc = evx_tasks_open(loop, url, &o, &q, &msg);
  if (rc != EVX_OK) {
    fprintf(stderr, "evx-tasks: cannot open %s: %s\n", url, msg ? msg : evx_strerror(rc));
    evx_free(msg);
    evx_loop_free(loop);
    return rc == EVX_EINVAL ? 2 : 1;
  }
  if (strcmp(cmd, "stats") == 0)
    rc = cmd_stats(loop, q);
  else if (strcmp(cmd, "list") == 0)
    rc = cmd_list(loop, q, limit);
  else
    rc = cmd_change(loop, q, strcmp(cmd, "retry") == 0, strcmp(arg, "--all") == 0 ? NULL : arg);
  if (rc != EVX_OK) fprintf(stderr, "evx-tasks: %s failed: %s\n", cmd, evx_strerror(rc));
  evx_future *f = evx_tasks_shutdown(q, 0);
  wait_for(loop, f);
  evx_future_release(f);
  evx_tasks_free(q);
  evx_loop_free(loop);
  return rc == EVX_OK ? 0 : rc == EVX_EINVAL ? 2 : 1;
}
