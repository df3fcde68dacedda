"""`lb list -c --json` of a large table: the document is written as the connections are read.

It was json.dumps(to_json(...), indent=2) of every connection at once: 200,000 connections took
8 s and 870 MB, so a million (the tables' size) about 40 s and 4 GB before the first byte, enough
for the OOM killer on a small director.  json_chunks gives the same text in pieces, each
connection formatted as it comes from reader.iter_connections."""
import json
from ipaddress import ip_address as ip

import pytest

from lb.listing import ConnRow, RealRow, ServiceRow, Stats, json_chunks, to_json

SERVICES = [ServiceRow("TCP", ip("198.18.0.22"), 443, "wlc", persistent=360, netmask="255.255.255.0",
                       reals=[RealRow(ip("198.18.1.16"), 443, "Masq", 1, stats=Stats(1, 2, 3, 4, 5))]),
            ServiceRow("", None, 0, "sh", fwmark=7, family=6, sched_flags=("sh-fallback",))]
CONNS = [ConnRow("TCP", 897, "ESTABLISHED", (ip("198.18.0.4"), 55746), (ip("198.18.0.22"), 443),
                 (ip("198.18.1.16"), 443)),
         ConnRow("UDP", 0, "UDP", (ip("2001:2::4"), 53000), (ip("2001:2::22"), 53), (ip("::ffff:198.18.1.1"), 53)),
         ConnRow("TCP", 3725, "TIME_WAIT", (ip("2001:2::5"), 1), (ip("2001:2::22"), 80), (ip("2001:2::1:0:0:1"), 8080))]


@pytest.mark.parametrize("services", [[], SERVICES])
@pytest.mark.parametrize("conns", [None, [], CONNS[:1], CONNS])
@pytest.mark.parametrize("sort", [True, False])
def test_same_text_as_json_dumps(services, conns, sort):
    text = "".join(json_chunks(services, None if conns is None else iter(conns), sort=sort))
    assert text == json.dumps(to_json(services, conns, sort=sort), indent=2)
    assert json.loads(text) == to_json(services, conns, sort=sort)


def test_connections_are_written_as_they_come():
    read = []

    def conns():
        for i in range(10_000):
            read.append(i)
            yield ConnRow("TCP", 900, "ESTABLISHED", (ip("198.18.0.4"), i), (ip("198.18.0.22"), 80),
                          (ip("198.18.1.16"), 80))

    chunks = json_chunks([], conns())
    head = next(chunks)                 # the services part, once the first connection is read
    assert read == [0]
    first = next(chunks)
    assert 0 < len(read) < 10_000 and first.count('"protocol"') == len(read)
    rest = "".join(chunks)
    assert len(json.loads(head + first + rest)["connections"]) == 10_000
