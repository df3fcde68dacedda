"""ipvsadm -S -n writes a service's options in print_service_entry's FMT_RULE order:
-p, -M, --pe, -o, then -b (ipvsadm 1.31)."""
from ipaddress import ip_address as ip

from lb.listing import RealRow, ServiceRow, format_save


def test_save_writes_ops_before_sched_flags():
    svc = ServiceRow("UDP", ip("192.0.2.11"), 53, "sh", sched_flags=("sh-fallback", "sh-port"), ops=True,
                     persistent=300, netmask="255.255.255.0",
                     reals=[RealRow(ip("198.51.100.5"), 53, "Masq", 1)])
    assert format_save([svc]) == (
        "-A -u 192.0.2.11:53 -s sh -p 300 -M 255.255.255.0 -o -b sh-fallback,sh-port\n"
        "-a -u 192.0.2.11:53 -r 198.51.100.5:53 -m -w 1\n")
