"""``lungseg fl-certificates``: a throwaway CA, the server's TLS certificate and one token per site."""

from __future__ import annotations

import argparse
import sys

from lungseg.federated.security import write_credentials


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = ("write ca.pem, ca.key, server.pem, server.key, tokens.json (server side) and <site>.token "
                          "(one per site) into --out; give each site ca.pem and its own token, keep the rest on the server")
    parser.add_argument("--out", required=True, help="folder to write into (private files get mode 600)")
    parser.add_argument("--sites", nargs="+", required=True, help="pseudonymous site IDs, e.g. site_a site_b site_c")
    parser.add_argument("--host", nargs="+", default=["localhost", "127.0.0.1"],
                        help="names / IP addresses the sites use to reach the server (in the certificate)")
    parser.add_argument("--days", type=int, default=30, help="validity of the certificates in days")


def run(args: argparse.Namespace) -> int:
    try:
        paths = write_credentials(args.out, args.sites, args.host, args.days)
    except ValueError as exc:
        print(f"lungseg fl-certificates: error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(str(p) for p in paths.values()))
    return 0
