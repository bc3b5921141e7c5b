"""Sequential keep-alive GETs on one connection, for the per-request counts of
allocations.sh and instructions.sh: URL COOKIE N EXTRA sends N requests with a browser-sized
set of 8 headers plus EXTRA more, and fails on any status but 200."""
import http.client
import sys
import urllib.parse

url, cookie, n, extra = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
u = urllib.parse.urlsplit(url)
headers = {"Cookie": cookie, "Accept": "application/json", "Accept-Language": "en",
           "Accept-Encoding": "identity", "User-Agent": "allocations-bench/1",
           "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}
headers.update({f"X-Extra-{i}": f"value-{i:04d}-abcdefghijklmnop" for i in range(extra)})
conn = http.client.HTTPConnection(u.hostname, u.port)
for _ in range(n):
    conn.request("GET", u.path or "/", headers=headers)
    r = conn.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"{url}: status {r.status}")
