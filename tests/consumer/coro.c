/* A coroutine HTTP service outside the evexec tree, built against the
 * installed package with the public names only (scripts/install-check.sh):
 * a handler that offloads and finishes itself, and a long poll whose client
 * leaves, so its await returns EVX_EGONE. Prints "consumer-coro: ok". */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <evexec/evexec.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static evx_loop *loop;
static evx_executor *pool;
static evx_condition *cond;
static int port;
static atomic_int poll_rc = 1, poll_done;
static char reply[512];

static void lookup(void *arg) { *(int *)arg = 42; } /* worker thread: may block */

static void on_offload(evx_request *req, void *arg) { /* a coroutine */
  (void)arg;
  int answer = 0;
  int rc = evx_await_job(pool, lookup, &answer);
  if (rc == EVX_EBUSY) {
    evx_request_reply_busy(req, 1);
    return;
  }
  char line[32];
  snprintf(line, sizeof line, "answer=%d\n", answer);
  evx_request_write_str(req, line); /* no finish: returning sends 200 + body */
}

static void on_poll(evx_request *req, void *arg) {
  (void)req;
  (void)arg;
  evx_future *w = evx_condition_wait(cond, 10000);
  int rc = evx_await(w); /* EVX_EGONE once the client leaves */
  evx_future_release(w);
  atomic_store(&poll_rc, rc);
  atomic_store(&poll_done, 1);
}

static int connect_to(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static void *client(void *arg) {
  (void)arg;
  int fd = connect_to();
  const char *get = "GET /offload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  if (fd >= 0 && write(fd, get, strlen(get)) > 0) {
    size_t n = 0;
    ssize_t r;
    while (n < sizeof reply - 1 && (r = read(fd, reply + n, sizeof reply - 1 - n)) > 0) n += (size_t)r;
  }
  if (fd >= 0) close(fd);
  fd = connect_to();
  const char *poll = "GET /poll HTTP/1.1\r\nHost: x\r\n\r\n";
  if (fd >= 0 && write(fd, poll, strlen(poll)) > 0) {
    nanosleep(&(struct timespec){.tv_nsec = 100000000}, NULL);
    close(fd); /* leave while the handler awaits */
  }
  for (int i = 0; i < 500 && !atomic_load(&poll_done); i++)
    nanosleep(&(struct timespec){.tv_nsec = 10000000}, NULL);
  evx_loop_stop(loop); /* safe from any thread */
  return NULL;
}

int main(void) {
  loop = evx_loop_new(NULL);
  pool = evx_executor_new(loop, &(evx_executor_opts){.threads = 2});
  cond = evx_condition_new(loop);
  evx_http *http = evx_http_new(loop, NULL);
  if (!pool || !cond || !http || evx_http_route_coro(http, "GET", "/offload", 0, on_offload, NULL) ||
      evx_http_route_coro(http, "GET", "/poll", 0, on_poll, NULL) ||
      evx_http_bind(http, "127.0.0.1", 0) != EVX_OK)
    return 1;
  port = evx_http_port(http);
  pthread_t t;
  if (pthread_create(&t, NULL, client, NULL) != 0) return 1;
  evx_loop_run(loop);
  pthread_join(t, NULL);
  evx_http_free(http);
  evx_condition_free(cond);
  evx_executor_free(pool);
  evx_loop_free(loop);
  if (!strstr(reply, "HTTP/1.1 200") || !strstr(reply, "answer=42")) {
    fprintf(stderr, "consumer-coro: bad reply: %s\n", reply);
    return 1;
  }
  if (atomic_load(&poll_rc) != EVX_EGONE) {
    fprintf(stderr, "consumer-coro: the long poll's await returned %d, not EVX_EGONE\n",
            atomic_load(&poll_rc));
    return 1;
  }
  printf("consumer-coro: ok (offload auto-finished, long poll got EVX_EGONE)\n");
  return 0;
}
