"""A naive bridge written the way users write one: redis-py, batched (XREADGROUP COUNT 100 or a
batch of list moves, then one pipeline of writes and the acknowledgements). The benchmark suite
runs it side by side with the router on the same redis-server and the same work.

usage: bridge.py URL MODE ARGS... ; N = 0 means run until killed (latency runs).
  stream  SRC DST N            stream -> stream through group g
  laravel SRC QUEUE N          stream -> Laravel queue (the same EVAL of two RPUSHes)
  fanout  SRC A B C N          stream -> stream A, stream B, list C
  multi   PREFIX K N           K streams PREFIX:src:i -> PREFIX:dst:i, one XREADGROUP over all
  queue   SRC DST N            list -> list, reliable (LMOVE into a processing list, LREM after)
  channel CHAN DST             SUBSCRIBE -> stream, until killed
  webhook SRC URL N            stream -> HTTP POST (one keep-alive connection)
"""

import http.client
import json
import sys
import time
import urllib.parse
import uuid

import redis

LARAVEL_PUSH = "redis.call('rpush', KEYS[1], ARGV[1])\nredis.call('rpush', KEYS[2], 1)"


def stream_loop(r, streams, n, write):
    """Read `streams` (dict key -> '>') through group g, hand each batch to `write(pipe, key,
    entries)`, then XACK in the same pipeline."""
    done = 0
    while n == 0 or done < n:
        resp = r.xreadgroup("g", "py", streams, count=100, block=1000)
        if not resp:
            continue
        p = r.pipeline(transaction=False)
        for key, entries in resp:
            if not entries:
                continue
            write(p, key, entries)
            p.xack(key, "g", *[eid for eid, _ in entries])
            done += len(entries)
        p.execute()


def laravel_job(data, queue):
    return json.dumps(
        {
            "uuid": str(uuid.uuid4()),
            "displayName": "App\\Jobs\\Bench",
            "job": "Illuminate\\Queue\\CallQueuedHandler@call",
            "maxTries": None,
            "maxExceptions": None,
            "failOnTimeout": False,
            "backoff": None,
            "timeout": None,
            "retryUntil": None,
            "data": {"commandName": "App\\Jobs\\Bench", "command": json.dumps(data)},
            "id": str(uuid.uuid4()),
            "attempts": 0,
            "queue": queue,
        }
    )


def main():
    url, mode, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    r = redis.Redis.from_url(url)
    if mode == "stream":
        src, dst, n = args[0], args[1], int(args[2])

        def write(p, _key, entries):
            for _eid, fields in entries:
                p.xadd(dst, fields)

        stream_loop(r, {src: ">"}, n, write)
    elif mode == "laravel":
        src, queue, n = args[0], args[1], int(args[2])
        key = "queues:" + queue

        def write(p, _key, entries):
            for _eid, fields in entries:
                data = {k.decode(): v.decode() for k, v in fields.items()}
                p.eval(LARAVEL_PUSH, 2, key, key + ":notify", laravel_job(data, queue))

        stream_loop(r, {src: ">"}, n, write)
    elif mode == "fanout":
        src, a, b, c, n = args[0], args[1], args[2], args[3], int(args[4])

        def write(p, _key, entries):
            for _eid, fields in entries:
                p.xadd(a, fields)
                p.xadd(b, fields)
                data = {k.decode(): v.decode() for k, v in fields.items()}
                p.rpush(c, json.dumps(data))

        stream_loop(r, {src: ">"}, n, write)
    elif mode == "multi":
        prefix, k, n = args[0], int(args[1]), int(args[2])
        streams = {f"{prefix}:src:{i}": ">" for i in range(k)}

        def write(p, key, entries):
            dst = key.decode().replace(":src:", ":dst:")
            for _eid, fields in entries:
                p.xadd(dst, fields)

        stream_loop(r, streams, n, write)
    elif mode == "queue":
        src, dst, n = args[0], args[1], int(args[2])
        processing = src + ":processing:py"
        done = 0
        while n == 0 or done < n:
            first = r.blmove(src, processing, 1, "LEFT", "RIGHT")
            if first is None:
                continue
            p = r.pipeline(transaction=False)
            for _ in range(99):
                p.lmove(src, processing, "LEFT", "RIGHT")
            items = [first] + [x for x in p.execute() if x is not None]
            p = r.pipeline(transaction=False)
            for item in items:
                p.rpush(dst, item)
            for item in items:
                p.lrem(processing, 1, item)
            p.execute()
            done += len(items)
    elif mode == "channel":
        chan, dst = args[0], args[1]
        ps = r.pubsub(ignore_subscribe_messages=True)
        ps.subscribe(chan)
        while True:
            msg = ps.get_message(timeout=1.0)
            if msg is None:
                continue
            batch = [msg]
            while len(batch) < 100:
                m = ps.get_message(timeout=0)
                if m is None:
                    break
                batch.append(m)
            p = r.pipeline(transaction=False)
            for m in batch:
                data = json.loads(m["data"])
                p.xadd(dst, {k: v if isinstance(v, str) else json.dumps(v) for k, v in data.items()})
            p.execute()
    elif mode == "webhook":
        src, target, n = args[0], urllib.parse.urlparse(args[1]), int(args[2])
        conn = http.client.HTTPConnection(target.hostname, target.port)

        def write(_p, _key, entries):
            for _eid, fields in entries:
                body = json.dumps({k.decode(): v.decode() for k, v in fields.items()})
                conn.request("POST", target.path, body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                if resp.status >= 300:
                    raise RuntimeError(f"webhook answered {resp.status}")

        stream_loop(r, {src: ">"}, n, write)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
