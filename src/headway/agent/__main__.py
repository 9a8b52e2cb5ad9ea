"""``python -m headway.agent``: the agent without the CLI (used by tests and the local fleet)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from pathlib import Path

from headway.agent.runtime import run_agent
from headway.agent.servers import split_servers
from headway.agent.settings import AgentSettings
from headway.errors import HeadwayError


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"label {text!r} must look like key=value")
    return key, value


def parse_args(argv: list[str] | None = None) -> AgentSettings:
    parser = argparse.ArgumentParser(prog="python -m headway.agent", description=__doc__)
    parser.add_argument("--server", action="append", default=None, metavar="URL[,URL...]",
                        help="server URL; several servers comma-separated or --server repeated "
                        "(default: $HEADWAY_SERVER, else http://127.0.0.1:7400)")
    parser.add_argument("--token", default=os.environ.get("HEADWAY_AGENT_TOKEN", ""),
                        help="agent token (default: $HEADWAY_AGENT_TOKEN)")
    parser.add_argument("--name", default=socket.gethostname())
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--label", action="append", type=_label, default=[],
                        metavar="KEY=VALUE")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--heartbeat", type=float, default=15.0)
    args = parser.parse_args(argv)
    servers = args.server or [os.environ.get("HEADWAY_SERVER") or "http://127.0.0.1:7400"]
    # checked (each URL, with a hint) by run_agent
    server = ",".join(split_servers(servers)) or ",".join(servers)
    return AgentSettings(server=server, token=args.token, name=args.name,
                         address=args.address, labels=dict(args.label),
                         state_dir=args.state_dir, heartbeat=args.heartbeat)


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s agent[{settings.name}] %(levelname)s %(message)s")
    try:
        asyncio.run(run_agent(settings))
    except HeadwayError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
