#!/bin/sh
# `make demo`: start the notes service (examples/notes) on 127.0.0.1:8080 with
# its database and mail spool under ./demo-data, and print what to try.
# The Makefile has already installed the Debian packages and built BUILD_DIR.
# Environment: NOTES_PORT (default 8080), NOTES_DEMO_DIR (default ./demo-data),
# NOTES_SMTP_URL (send real mail instead of spooling it).
set -eu
build=${1:-build}
bin="$build/examples/notes/evx_notes"
if [ ! -x "$bin" ]; then
  echo "demo: $bin was not built (it needs SQLite, libcurl and jansson: run 'make deps')" >&2
  exit 1
fi
data=${NOTES_DEMO_DIR:-demo-data}
port=${NOTES_PORT:-8080}
mkdir -p "$data"
url="http://127.0.0.1:$port"

cat <<EOF
evx_notes demo: database $data/notes.db, mail spool $data/spool/
Try, in another terminal:

  curl -i -X POST $url/notes -d '{"title":"hello","body":"my first note"}'
  curl $url/notes
  curl $url/notes/1
  curl '$url/notes/wait?since=1'      # long poll: answers when note 2 arrives (or 204 after 30 s)
  curl -X POST $url/notes -d '{"title":"second"}'
  curl -i -X POST $url/notes -d '{"title":'   # 400 with the parser's message
  curl -i $url/notes/999                       # 404
  curl $url/metrics                            # Prometheus text
  ls $data/spool                               # the "new note" mails, one .eml each

Ctrl-C stops it cleanly (pending mail is still delivered).

EOF
exec "$bin" --host 127.0.0.1 --port "$port" --db "$data/notes.db" --spool "$data/spool"
