#!/usr/bin/env python3
"""Counts the TCP connections a keep-alive client needs for N answers.

usage: connections.py HOST:PORT PATH N [HEADER:VALUE ...]

Sends N GET requests, reusing one connection for as long as the server
keeps it: a `Connection: close` answer, or a connection the server closed,
makes the next request open a new one. Prints one JSON line:
{"path": ..., "requests": N, "connections": C, "statuses": {...},
 "degraded": {...}}
"""
import http.client
import json
import sys


def main():
    hostport, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    headers = dict(h.split(":", 1) for h in sys.argv[4:])
    host, port = hostport.rsplit(":", 1)
    conn, connections = None, 0
    statuses, degraded = {}, {}
    done = 0
    attempts = 0
    while done < n and attempts < n * 3:
        attempts += 1
        if conn is None:
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.connect()
            connections += 1
        try:
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
            r.read()
        except (http.client.HTTPException, ConnectionError, OSError):
            # The server closed a connection it had kept open: reconnect
            # and send the request again (not counted as answered).
            conn.close()
            conn = None
            continue
        done += 1
        statuses[r.status] = statuses.get(r.status, 0) + 1
        d = r.getheader("X-Graceway-Degraded") or "-"
        degraded[d] = degraded.get(d, 0) + 1
        if (r.getheader("Connection") or "").lower() == "close" or r.will_close:
            conn.close()
            conn = None
    print(json.dumps({"path": path, "requests": done, "connections": connections,
                      "statuses": statuses, "degraded": degraded}))


if __name__ == "__main__":
    main()
