/* ext/tasks crash tests: a process under an enqueue/lease/complete load is
 * SIGKILLed at random points, many times (fork, kill, restart), then a last
 * process drains the queue. Every task whose enqueue future resolved OK must
 * have completed at least once; a task completed more than once only when
 * an earlier completion was in a process that was killed (its settle may not
 * have committed); and the database agrees: nothing left waiting or dead,
 * and exactly as many distinct tasks completed as were ever stored.
 *
 * The processes record facts in append-only files, one write(2) per line so
 * a kill cannot tear one: accepted.log "A <seq> <id>" when an enqueue
 * resolved, done.log "D <seq> <pid>" in the handler before it answers DONE.
 * EVX_TEST_SLOW (set for valgrind runs) cuts the number of kills. */
#include <errno.h>
#include <evexec/tasks.h>
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "evx_test.h"

static char dir[64], db_path[128], url[160], acc_path[160], done_path[160];
static int acc_fd = -1, done_fd = -1;

/* ---- the child: a server process ------------------------------------------------ */

typedef struct child {
  evx_loop *loop;
  evx_tasks *q;
  int iter;
  int next;
  int outstanding;
  uint64_t start_ms;
} child;

static void put_line(int fd, const char *s) {
  size_t n = strlen(s);
  while (n > 0) {
    ssize_t w = write(fd, s, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) _exit(3);
    s += w;
    n -= (size_t)w;
  }
}

static evx_task_result crash_handler(evx_task *t, void *arg) {
  (void)arg;
  size_t len;
  const char *p = evx_task_payload(t, &len);
  char buf[64], line[96];
  if (len >= sizeof buf) return EVX_TASK_FAIL;
  memcpy(buf, p, len);
  buf[len] = '\0';
  snprintf(line, sizeof line, "D %s %ld\n", buf, (long)getpid());
  put_line(done_fd, line);
  evx_test_spin_us((unsigned)(evx_now_ns() % 300));
  return EVX_TASK_DONE;
}

static void on_enqueued(evx_future *f, void *arg);

typedef struct enq_arg {
  child *c;
  int seq;
} enq_arg;

static void enqueue_tick(void *arg) {
  child *c = arg;
  for (int i = 0; i < 20 && c->outstanding < 400; i++) {
    enq_arg *a = malloc(sizeof *a);
    if (!a) _exit(4);
    a->c = c;
    a->seq = c->iter * 1000000 + c->next++;
    char payload[32];
    int n = snprintf(payload, sizeof payload, "%d", a->seq);
    evx_future *f = evx_tasks_enqueue(c->q, "work", payload, (size_t)n, NULL);
    if (!f || evx_future_on_done(f, on_enqueued, a) != EVX_OK) _exit(5);
    c->outstanding++;
  }
  if (!evx_call_later(c->loop, 2, enqueue_tick, c)) _exit(6);
}

static void on_enqueued(evx_future *f, void *arg) {
  enq_arg *a = arg;
  a->c->outstanding--;
  if (evx_future_status(f) == EVX_OK) {
    char line[96];
    snprintf(line, sizeof line, "A %d %s\n", a->seq, (const char *)evx_future_result(f));
    put_line(acc_fd, line);
  } else if (evx_future_status(f) != EVX_EBUSY) {
    _exit(7); /* nothing else may fail here */
  }
  evx_future_release(f);
  free(a);
}

static uint64_t wall_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

/* Drain mode: stop once a count taken after start-up shows nothing waiting. */
static void drain_tick(void *arg) {
  child *c = arg;
  evx_tasks_stats s;
  evx_tasks_stats_get(c->q, &s);
  if (s.counted_ms > c->start_ms + 400 && s.ready + s.delayed + s.leased == 0 && s.running == 0) {
    evx_loop_stop(c->loop);
    return;
  }
  if (!evx_call_later(c->loop, 20, drain_tick, c)) _exit(6);
}

static void stop_on_done(evx_future *f, void *arg) {
  (void)f;
  evx_loop_stop(arg);
}

static void run_child(int iter, int drain) {
  child c = {0};
  c.iter = iter;
  c.start_ms = wall_ms();
  c.loop = evx_loop_new(NULL);
  if (!c.loop) _exit(10);
  /* A short lease, so tasks leased by a killed process come back soon. */
  evx_tasks_opts o = {.workers = 2, .poll_ms = 10, .visibility_ms = 1500, .max_pending = 5000,
                      .backoff_ms = 10};
  char *msg = NULL;
  if (evx_tasks_open(c.loop, url, &o, &c.q, &msg) != EVX_OK) {
    fprintf(stderr, "child: open: %s\n", msg ? msg : "?");
    _exit(11);
  }
  if (evx_tasks_register(c.q, "work", crash_handler, NULL) != EVX_OK) _exit(12);
  if (evx_tasks_start(c.q) != EVX_OK) _exit(13);
  if (!evx_call_later(c.loop, 1, drain ? drain_tick : enqueue_tick, &c)) _exit(14);
  evx_loop_run(c.loop);
  evx_future *f = evx_tasks_shutdown(c.q, 1000);
  if (!f || evx_future_on_done(f, stop_on_done, c.loop) != EVX_OK) _exit(15);
  evx_loop_run(c.loop);
  evx_future_release(f);
  evx_tasks_free(c.q);
  evx_loop_free(c.loop);
  _exit(0);
}

/* ---- the parent: kill, restart, verify ----------------------------------------------- */

#define MAX_SEQ_ITERS 64

typedef struct seqinfo {
  int accepted;
  int done;
  int done_clean; /* completions in the process that was not killed */
  int last_clean; /* the last completion was in the clean process */
  long pids[4];
} seqinfo;

static seqinfo *seqs[MAX_SEQ_ITERS];

static seqinfo *seq_at(int seq) {
  int iter = seq / 1000000, k = seq % 1000000;
  ck_assert_msg(iter >= 0 && iter < MAX_SEQ_ITERS && k < 200000, "bad seq %d", seq);
  if (!seqs[iter]) seqs[iter] = calloc(200000, sizeof(seqinfo));
  return &seqs[iter][k];
}

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  ck_assert_ptr_nonnull(f);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
  buf[n] = '\0';
  fclose(f);
  return buf;
}

static long long db_int(sqlite3 *db, const char *sql) {
  sqlite3_stmt *st = NULL;
  ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
  long long v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
  sqlite3_finalize(st);
  return v;
}

START_TEST(kill_restart_loses_nothing) {
  snprintf(dir, sizeof dir, "/tmp/evx_crash_XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(dir));
  snprintf(db_path, sizeof db_path, "%s/tasks.db", dir);
  snprintf(url, sizeof url, "sqlite:%s", db_path);
  snprintf(acc_path, sizeof acc_path, "%s/accepted.log", dir);
  snprintf(done_path, sizeof done_path, "%s/done.log", dir);
  acc_fd = open(acc_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
  done_fd = open(done_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
  ck_assert_int_ge(acc_fd, 0);
  ck_assert_int_ge(done_fd, 0);

  int kills = getenv("EVX_TEST_SLOW") ? 4 : 16;
  unsigned seed = (unsigned)evx_now_ns();
  fprintf(stderr, "crash test: %d kills, seed %u\n", kills, seed);
  srand(seed);
  for (int i = 0; i < kills; i++) {
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) run_child(i, 0);
    unsigned ms = (getenv("EVX_TEST_SLOW") ? 2000 : 20) + (unsigned)(rand() % 150); /* valgrind: a forked child needs ~1 s to accept its first tasks */
    evx_test_sleep_ms(ms);
    ck_assert_int_eq(kill(pid, SIGKILL), 0);
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                  "child %d ended by itself (status 0x%x) before the kill", i, status);
  }
  pid_t pid = fork();
  ck_assert_int_ge(pid, 0);
  if (pid == 0) run_child(kills, 1);
  int status = 0;
  ck_assert_int_eq(waitpid(pid, &status, 0), pid);
  ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "drain child status 0x%x", status);
  long clean_pid = (long)pid;

  /* What was accepted, what ran. */
  char *acc = slurp(acc_path), *done = slurp(done_path);
  int naccepted = 0, ndone = 0, dups = 0;
  for (char *line = strtok(acc, "\n"); line; line = strtok(NULL, "\n")) {
    int seq;
    ck_assert_int_eq(sscanf(line, "A %d", &seq), 1);
    seq_at(seq)->accepted++;
    naccepted++;
  }
  for (char *line = strtok(done, "\n"); line; line = strtok(NULL, "\n")) {
    int seq;
    long p;
    ck_assert_int_eq(sscanf(line, "D %d %ld", &seq, &p), 2);
    seqinfo *si = seq_at(seq);
    for (int j = 0; j < si->done && j < 4; j++)
      ck_assert_msg(si->pids[j] != p, "task %d completed twice in process %ld", seq, p);
    if (si->done < 4) si->pids[si->done] = p;
    si->done++;
    ndone++;
    si->last_clean = p == clean_pid;
    if (p == clean_pid) si->done_clean++;
  }
  long long distinct = 0;
  for (int it = 0; it < MAX_SEQ_ITERS; it++) {
    if (!seqs[it]) continue;
    for (int k = 0; k < 200000; k++) {
      seqinfo *si = &seqs[it][k];
      ck_assert_msg(si->accepted <= 1, "task %d accepted twice", it * 1000000 + k);
      if (si->accepted) ck_assert_msg(si->done >= 1, "accepted task %d never completed", it * 1000000 + k);
      if (si->done) distinct++;
      if (si->done > 1) {
        dups++;
        /* Every completion but the last was in a killed process. */
        ck_assert_msg(si->done_clean <= 1 && (si->done_clean == 0 || si->last_clean),
                      "task %d completed again after a clean completion", it * 1000000 + k);
      }
    }
    free(seqs[it]);
    seqs[it] = NULL;
  }
  free(acc);
  free(done);

  /* The database agrees. */
  sqlite3 *db = NULL;
  ck_assert_int_eq(sqlite3_open(db_path, &db), SQLITE_OK);
  ck_assert_int_eq(db_int(db, "SELECT count(*) FROM evx_tasks"), 0);
  ck_assert_int_eq(db_int(db, "SELECT count(*) FROM evx_tasks_dead"), 0);
  long long stored = db_int(db, "SELECT seq FROM sqlite_sequence WHERE name = 'evx_tasks'");
  sqlite3_close(db);
  fprintf(stderr, "crash test: %d accepted, %lld stored, %lld completed (%d runs, %d duplicates)\n",
          naccepted, stored, distinct, ndone, dups);
  ck_assert_int_gt(naccepted, kills * 10);
  ck_assert_int_eq(distinct, stored);
  ck_assert_int_ge(stored, naccepted);
  close(acc_fd);
  close(done_fd);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  ck_assert_int_eq(system(cmd), 0);
}
END_TEST

int main(void) {
  Suite *s = suite_create("tasks_crash");
  TCase *tc = tcase_create("crash");
  tcase_set_timeout(tc, 110);
  tcase_add_test(tc, kill_restart_loses_nothing);
  suite_add_tcase(s, tc);
  return evx_test_main(s);
}
