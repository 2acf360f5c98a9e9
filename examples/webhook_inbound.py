"""Answer inbound SIP calls: a webhook receiver takes each call the server announces, accepts it, greets the
caller with `tts` and hangs up once the greeting has played (or when the caller hangs up first).

    python examples/webhook_inbound.py --server http://localhost:8080 --port 8081
    # the server runs with SIP_WEBHOOK_URL=http://<this host>:8081/webhook

`--calls N` exits after N calls (for a demo or a test); without it the receiver runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

from pbxclient import CallClosed, CallEnded, Client, InboundCall, Incoming, WebhookReceiver

log = logging.getLogger("examples.webhook_inbound")


async def greet(client: Client, invite: InboundCall, greeting: str) -> str:
    """Take one call through its whole life; returns how it ended."""
    call = await client.attach(invite.dialog_id)
    try:
        incoming = await call.wait_for(Incoming, timeout=10)
        log.info("call %s from %s to %s", call.id, incoming.caller, incoming.callee)
        await call.accept()
        # autoHangup: the server hangs up after the greeting's last frame, so nothing here has to time it.
        await call.tts(greeting, play_id="greeting", auto_hangup=True)
        hangup = await call.wait_ended(timeout=120)
        reason = hangup.reason if hangup is not None and hangup.reason else "ended"
    except (CallEnded, CallClosed) as exc:  # the caller left before the accept or the greeting
        reason = f"ended early: {exc}"
    finally:
        await call.close()
    print(f"call {invite.dialog_id}: {reason}", flush=True)
    return reason


async def serve(args: argparse.Namespace) -> None:
    done = asyncio.Semaphore(0)
    async with Client(args.server, token=args.token) as client:

        async def on_call(invite: InboundCall) -> None:
            try:
                await greet(client, invite, args.greeting)
            finally:
                done.release()

        async with WebhookReceiver(args.host, args.port, args.path, on_call=on_call) as hook:
            print(f"listening on {hook.url}", flush=True)
            if args.calls is None:
                await asyncio.Event().wait()
            for _ in range(args.calls or 0):
                await done.acquire()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="the call server, e.g. http://localhost:8080")
    parser.add_argument("--token", default=None, help="the server's API_TOKEN, if it has one")
    parser.add_argument("--host", default="127.0.0.1", help="where the webhook listens")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--path", default="/webhook")
    parser.add_argument("--greeting", default="Hello, thank you for calling. Goodbye!")
    parser.add_argument("--calls", type=int, default=None, help="exit after this many calls")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
