/* A real SMTP server for the mail and notes suites (test-only, never installed).
 *
 * Starts Debian's aiosmtpd (/usr/bin/python3) on 127.0.0.1 with an ephemeral
 * port. The server writes each message it accepts to <dir>/<n>.eml and prints
 * one line per message on its stdout:
 *     MSG <mail-from> <rcpt,rcpt> <file> <decoded subject>
 * so a test waits for a delivery by reading a line (poll with a timeout),
 * never by sleeping. Options: the first `fail_first` DATA commands are
 * answered "451 try again later" (a server that recovers); recipients that
 * start with "reject" get "550 no such user" (a permanent error).
 */
#ifndef EVX_TEST_NOTES_SMTP_H
#define EVX_TEST_NOTES_SMTP_H

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char evx_smtp_sink_py[] =
    "import asyncio, email, email.header, os, sys\n"
    "from aiosmtpd.smtp import SMTP\n"
    "class Handler:\n"
    "    def __init__(self, d, fail_first):\n"
    "        self.d = d; self.n = 0; self.fail_left = fail_first\n"
    "    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):\n"
    "        if address.startswith('reject'):\n"
    "            return '550 5.1.1 no such user'\n"
    "        envelope.rcpt_tos.append(address)\n"
    "        return '250 OK'\n"
    "    async def handle_DATA(self, server, session, envelope):\n"
    "        if self.fail_left > 0:\n"
    "            self.fail_left -= 1\n"
    "            print('TEMPFAIL', flush=True)\n"
    "            return '451 4.3.0 try again later'\n"
    "        self.n += 1\n"
    "        p = os.path.join(self.d, '%d.eml' % self.n)\n"
    "        with open(p, 'wb') as f:\n"
    "            f.write(envelope.original_content)\n"
    "        msg = email.message_from_bytes(envelope.original_content)\n"
    "        subj = str(email.header.make_header(email.header.decode_header(msg['Subject'] or '')))\n"
    "        print('MSG', envelope.mail_from, ','.join(envelope.rcpt_tos), p, subj, flush=True)\n"
    "        return '250 Message accepted'\n"
    "async def main():\n"
    "    h = Handler(sys.argv[1], int(sys.argv[2]))\n"
    "    loop = asyncio.get_running_loop()\n"
    "    srv = await loop.create_server(lambda: SMTP(h, enable_SMTPUTF8=True),\n"
    "                                   '127.0.0.1', 0)\n"
    "    print('PORT', srv.sockets[0].getsockname()[1], flush=True)\n"
    "    await srv.serve_forever()\n"
    "asyncio.run(main())\n";

typedef struct evx_smtp_sink {
  pid_t pid;
  int out;        /* read end of the server's stdout */
  int port;
  char buf[8192]; /* unread bytes from `out` */
  size_t len;
} evx_smtp_sink;

/* Read one line from the sink (without the newline) within timeout_ms.
 * Returns 0, or -1 on timeout / EOF. */
static inline int evx_smtp_sink_line(evx_smtp_sink *s, char *line, size_t size, int timeout_ms) {
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    char *nl = memchr(s->buf, '\n', s->len);
    if (nl) {
      size_t n = (size_t)(nl - s->buf);
      size_t c = n < size - 1 ? n : size - 1;
      memcpy(line, s->buf, c);
      line[c] = '\0';
      memmove(s->buf, nl + 1, s->len - n - 1);
      s->len -= n + 1;
      return 0;
    }
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long spent = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    if (spent >= timeout_ms || s->len == sizeof s->buf) return -1;
    struct pollfd p = {.fd = s->out, .events = POLLIN};
    int r = poll(&p, 1, (int)(timeout_ms - spent));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    ssize_t got = read(s->out, s->buf + s->len, sizeof s->buf - s->len);
    if (got <= 0) return -1;
    s->len += (size_t)got;
  }
}

/* Start the server; messages go to `dir`. Returns 0, or -1 (no python/aiosmtpd). */
static inline int evx_smtp_sink_start(evx_smtp_sink *s, const char *dir, int fail_first) {
  memset(s, 0, sizeof *s);
  int fds[2];
  if (pipe(fds) != 0) return -1;
  char ff[16];
  snprintf(ff, sizeof ff, "%d", fail_first);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    execl("/usr/bin/python3", "python3", "-c", evx_smtp_sink_py, dir, ff, (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  s->pid = pid;
  s->out = fds[0];
  char line[128];
  if (evx_smtp_sink_line(s, line, sizeof line, 15000) != 0 || sscanf(line, "PORT %d", &s->port) != 1) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    close(s->out);
    return -1;
  }
  return 0;
}

static inline void evx_smtp_sink_stop(evx_smtp_sink *s) {
  if (s->pid <= 0) return;
  kill(s->pid, SIGTERM);
  waitpid(s->pid, NULL, 0);
  close(s->out);
  s->pid = 0;
}

/* A TCP port on 127.0.0.1 where nothing listens: bound (so no one else gets
 * it) but never listen()ed, so a connect is refused at once. *fd keeps it. */
static inline int evx_dead_port(int *fd) {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 ||
      getsockname(s, (struct sockaddr *)&a, &len) != 0) {
    if (s >= 0) close(s);
    return -1;
  }
  *fd = s;
  return ntohs(a.sin_port);
}

/* A TCP port on 127.0.0.1 that accepts connections (the kernel completes the
 * handshake) but never says a word: an SMTP client waits for the greeting
 * until its own timeout. *fd keeps it. */
static inline int evx_silent_port(int *fd) {
  int port = evx_dead_port(fd);
  if (port > 0 && listen(*fd, 16) != 0) {
    close(*fd);
    return -1;
  }
  return port;
}

#endif
