#!/bin/bash
# Route table cost (docs/cluster.md, "Measured"): 2 tern nodes on one
# redis-server (free loopback ports, one temp dir), a login storm of N devices
# spread over both with tern-load; prints bytes per route hash, route writes
# sampled every 0.5 s, Redis command stats. Every process is stopped by PID.
# Usage: bash bench/scripts/cluster-routes.sh [N]   (BIN=target/release to use a release build)
set -u
B=${BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/debug}
N=${1:-4000}
D=$(mktemp -d)
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
RP=$(port)
redis-server --port $RP --bind 127.0.0.1 --save "" --appendonly yes --appendfsync always --dir $D >/dev/null 2>&1 & RPID=$!
sleep 0.5
PIDS=()
TCP=(); HTTP=()
for i in 1 2; do
  T=$(port); W=$(port); H=$(port); mkdir -p $D/n$i
  $B/tern serve --store redis --redis-url redis://127.0.0.1:$RP --listen 127.0.0.1:$T --ws-listen 127.0.0.1:$W --http 127.0.0.1:$H \
    --jwt-secret s --shards 1 --node-id n$i --data-dir $D/n$i 2>$D/n$i.log & PIDS+=($!)
  TCP+=(127.0.0.1:$T); HTTP+=(127.0.0.1:$H)
done
sleep 1.5
mem() { redis-cli -p $RP INFO memory | awk -F: '/^used_memory:/{print $2}' | tr -d '\r'; }
M0=$(mem)
writes() { s=0; for h in "${HTTP[@]}"; do v=$(curl -s http://$h/metrics | awk '/^tern_cluster_route_writes_total/{print $2}'); s=$((s+${v:-0})); done; echo $s; }
( for t in $(seq 1 40); do echo "t=$t writes=$(writes)"; sleep 0.5; done ) > $D/samples.txt & SPID=$!
$B/tern-load idle --target ${TCP[0]},${TCP[1]} --jwt-secret s --conns $N --ramp $N --hold 8 --json --quiet > $D/load.json & LPID=$!
for t in $(seq 1 100); do [ "$(writes)" -ge "$N" ] && break; sleep 0.1; done
sleep 0.5
M1=$(mem)
HASHES=$(redis-cli -p $RP --scan --pattern '{u:*}:rt' | wc -l)
redis-cli -p $RP --scan --pattern '{u:*}:rt' | head -200 > $D/keys.txt
while read k; do redis-cli -p $RP MEMORY USAGE "$k"; done < $D/keys.txt | awk '{s+=$1;n++} END{print "MEMORY USAGE per route hash (1 field), avg of",n,":",s/n}'
redis-cli -p $RP HGETALL "$(head -1 $D/keys.txt)"
echo "route hashes while held: $HASHES"
wait $LPID
kill $SPID 2>/dev/null; wait $SPID 2>/dev/null
echo "load: $(cat $D/load.json | head -c 600)"
echo "used_memory before=$M0 after=$M1 delta/device=$(( (M1-M0)/N ))"
sleep 1
echo "route hashes after the devices left: $(redis-cli -p $RP --scan --pattern '{u:*}:rt' | wc -l)"
redis-cli -p $RP INFO commandstats | grep -E "cmdstat_(hset|eval|hgetall|xadd|set|sadd):" 
redis-cli -p $RP INFO stats | grep -E "total_commands_processed|total_net_input_bytes"
cat $D/samples.txt | awk '{print}' | tr '\n' ' '; echo
for p in "${PIDS[@]}"; do kill $p; done; sleep 3; for p in "${PIDS[@]}"; do kill -9 $p 2>/dev/null; done
kill $RPID; wait $RPID 2>/dev/null
rm -rf $D
