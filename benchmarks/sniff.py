#!/usr/bin/env python3
"""sniff.py IFACE FILE: writes every frame seen on IFACE to FILE (raw bytes, one after the
other) until SIGTERM. A stand-in for tcpdump where it is not installed: wan_netns.sh
--capture runs it on a cloud's link, in the control namespace, to show what crosses the
WAN. Needs root (AF_PACKET)."""
import signal
import socket
import sys


def main():
    iface, path = sys.argv[1], sys.argv[2]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))  # ETH_P_ALL
    s.bind((iface, 0))
    out = open(path, "wb")

    def stop(*_):
        out.close()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("sniffing", iface, flush=True)
    while True:
        out.write(s.recv(1 << 17))


if __name__ == "__main__":
    main()
