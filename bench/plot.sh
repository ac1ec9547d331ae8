#!/bin/sh
# Draw the benchmark figures with gnuplot (Debian's gnuplot-nox), from one
# bench/run.sh run:
#
#   sh bench/plot.sh DIR RESULTS
#
# DIR holds pingpong-hist.dat (evx-bench pingpong --hist, columns bin_us
# evexec libuv) and receives the PNGs; RESULTS is run.sh's output (the
# `http impl=... route=... rps=...` lines). Writes
#   DIR/pingpong-latency.png  job latency histograms, evexec vs libuv (log x)
#   DIR/http-throughput.png   requests/s per route and server (bars)
# and prints one `figure path=...` line per PNG. A figure whose data is
# missing is skipped with a `figure skipped` line; no gnuplot: exit 1.
set -eu
dir=$1
results=$2
command -v gnuplot >/dev/null 2>&1 || {
  echo "plot.sh: gnuplot not installed (make bench installs gnuplot-nox)" >&2
  exit 1
}

hist=$dir/pingpong-hist.dat
if [ -s "$hist" ]; then
  gnuplot <<GP
set terminal pngcairo size 900,500 font "sans,11"
set output "$dir/pingpong-latency.png"
set title "pingpong: one job in flight, submit -> done on the loop thread"
set xlabel "latency (us, log scale; quarter-octave bins)"
set ylabel "jobs (share of all timed jobs, %)"
set logscale x
set xrange [1:10000]
set grid xtics ytics
set key top right
stats "$hist" using 2 nooutput name "E"
stats "$hist" using 3 nooutput name "U"
plot "$hist" using 1:(100*\$2/E_sum) with steps lw 2 title "evexec (evx\\\\_submit)", \
     "$hist" using 1:(100*\$3/U_sum) with steps lw 2 title "libuv (uv\\\\_queue\\\\_work)"
GP
  echo "figure path=$dir/pingpong-latency.png"
else
  echo "figure skipped name=pingpong-latency reason=no-$hist"
fi

bars=$dir/http-throughput.dat
# rows: route, then rps per server in a fixed column order
awk '
  /^http impl=/ {
    impl = ""; route = ""; rps = ""
    for (i = 2; i <= NF; i++) {
      split($i, kv, "=")
      if (kv[1] == "impl") impl = kv[2]
      else if (kv[1] == "route") route = substr($i, 7)
      else if (kv[1] == "rps") rps = kv[2]
    }
    if (impl != "" && route != "" && rps != "") {
      if (!(route in seen)) { seen[route] = 1; order[++n] = route }
      v[route, impl] = rps
    }
  }
  END {
    if (n == 0) exit
    print "route evexec evhttp-plain tornado"
    for (k = 1; k <= n; k++) {
      r = order[k]
      printf "%s %s %s %s\n", r, (r SUBSEP "evexec") in v ? v[r, "evexec"] : "0",
        (r SUBSEP "evhttp") in v ? v[r, "evhttp"] : "0",
        (r SUBSEP "tornado") in v ? v[r, "tornado"] : "0"
    }
  }' "$results" >"$bars"
if [ -s "$bars" ]; then
  gnuplot <<GP
set terminal pngcairo size 900,500 font "sans,11"
set output "$dir/http-throughput.png"
set title "HTTP throughput under wrk (requests/s, log scale, higher is better)"
set ylabel "requests/s"
set logscale y
set yrange [10:*]
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set grid ytics
set key top right
set xtics noenhanced
plot "$bars" using 2:xtic(1) title columnheader(2), "" using 3 title columnheader(3), \
     "" using 4 title columnheader(4)
GP
  echo "figure path=$dir/http-throughput.png"
else
  echo "figure skipped name=http-throughput reason=no-http-lines"
fi
