#!/usr/bin/env bash
# The demo: a namespace lab (client, director, three real servers), lb running on the director,
# traffic through it by NAT, by direct routing and by tunneling, and the table as ipvsadm would show it.
# Everything stays in the lab's namespaces on 198.18.0.0/15 and is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
LB=.venv/bin/lb
LBPID=

cleanup() {
  if [ -n "$LBPID" ] && kill -0 "$LBPID" 2>/dev/null; then
    kill -TERM "$LBPID" 2>/dev/null || true
    wait "$LBPID" 2>/dev/null || true
  fi
  $LB lab down >/dev/null 2>&1 || true
  rm -rf /sys/fs/bpf/lb/lab
}
trap cleanup EXIT

run_network() {
  local net=$1 cfg=$2
  echo
  echo "=================== $net: lb run --config $cfg ==================="
  $LB lab up --network "$net" >/dev/null
  nsenter --net=/run/netns/lb-director -- $LB run --config "$cfg" 2> /tmp/lb-demo-$net.log &
  LBPID=$!
  # ready once its control socket answers: lb answers only after the XDP programs are attached
  # and the table applied (a first start compiles them: seconds; later ones load them cached)
  $LB status --instance lab --wait 300 --pid "$LBPID" > /tmp/lb-demo-$net.status \
    || { cat /tmp/lb-demo-$net.log; exit 1; }
  sed 's/^[0-9-]* [0-9:,]* /  /' /tmp/lb-demo-$net.log
  echo
  echo "--- 9 requests from the client to http://198.18.0.10/"
  for i in $(seq 1 9); do
    printf '  request %d -> %s\n' "$i" "$($LB lab exec client -- curl -s --max-time 3 http://198.18.0.10/)"
  done
  echo
  echo "--- lb list -n --instance lab"
  $LB list -n --instance lab
  echo
  echo "--- lb list -n --stats --instance lab"
  $LB list -n --stats --instance lab
  echo
  echo "--- lb list -n -c --instance lab"
  $LB list -n -c --instance lab
  kill -TERM "$LBPID"; wait "$LBPID" || true; LBPID=
  $LB lab down >/dev/null
}

run_network nat configs/lab-nat.toml
run_network direct configs/lab-dr.toml
run_network tunnel configs/lab-tunnel.toml
echo
echo "demo done: lab removed"
