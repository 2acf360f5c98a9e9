"""A DTMF menu on inbound SIP calls: "press 1 for sales, 2 for support". 1 plays a message and hangs up; 2
transfers the caller to a person (`refer`: the server dials the agent and bridges the two). No key within
`--timeout` seconds after the prompt: the prompt once more, then goodbye.

    python examples/ivr.py --server http://localhost:8080 --port 8081 --agent sip:alice@pbx.example.com
    # the server runs with SIP_WEBHOOK_URL=http://<this host>:8081/webhook
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

from pbxclient import (
    Answer,
    Call,
    CallClosed,
    CallEnded,
    Client,
    Dtmf,
    InboundCall,
    Incoming,
    ReferOption,
    Reject,
    Silence,
    WebhookReceiver,
)

MENU = "Press 1 for sales, or 2 for support."
SALES = "Our sales team is out right now. Please write to sales at example dot com. Goodbye!"
SERVER_TRACK = "server-side-track"  # the track id of tts and play, which a waitInputTimeout's silence names


async def choose(call: Call, timeout: float) -> str | None:
    """The key pressed (1 or 2), or None after two prompts without one."""
    for attempt in range(2):
        start = call.position
        text = MENU if attempt == 0 else "Sorry, I did not get that. " + MENU
        # waitInputTimeout: the server starts the clock when the prompt ends, and a key press stops it.
        await call.tts(text, play_id=f"menu-{attempt}", wait_input_timeout=int(timeout * 1000))
        while True:
            ev = await call.wait_for((Dtmf, Silence), timeout=60 + timeout, after=start)
            if isinstance(ev, Dtmf):
                if ev.digit in ("1", "2"):
                    return ev.digit
                break  # another key: it stopped the timer, so prompt again
            if isinstance(ev, Silence) and ev.track_id == SERVER_TRACK:
                break
    return None


async def handle(client: Client, invite: InboundCall, agent: str, timeout: float) -> str:
    call = await client.attach(invite.dialog_id)
    try:
        await call.wait_for(Incoming, timeout=10)
        await call.accept()
        digit = await choose(call, timeout)
        if digit == "1":
            await call.tts(SALES, play_id="sales", auto_hangup=True)
            outcome = "sales"
        elif digit == "2":
            await call.tts("Connecting you to support.", play_id="transfer")
            await call.refer(agent, options=ReferOption(timeout=30, auto_hangup=True))
            leg = await call.wait_for((Answer, Reject), timeout=40, refer=True)
            if isinstance(leg, Reject):
                await call.tts("Sorry, nobody can take your call. Goodbye!", play_id="bye", auto_hangup=True)
                outcome = f"transfer failed ({leg.code} {leg.reason})"
            else:
                outcome = "transferred"  # the agent's leg carries the call; it ends when either side leaves
        else:
            await call.tts("Goodbye!", play_id="bye", auto_hangup=True)
            outcome = "no choice"
        hangup = await call.wait_ended(timeout=None)
        outcome += f", ended: {hangup.reason if hangup is not None else 'closed'}"
    except (CallEnded, CallClosed):
        outcome = "caller left"
    finally:
        await call.close()
    print(f"call {invite.dialog_id}: {outcome}", flush=True)
    return outcome


async def serve(args: argparse.Namespace) -> None:
    done = asyncio.Semaphore(0)
    async with Client(args.server, token=args.token) as client:

        async def on_call(invite: InboundCall) -> None:
            try:
                await handle(client, invite, args.agent, args.timeout)
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
    parser.add_argument("--agent", required=True, help="where 2 transfers to, e.g. sip:alice@pbx.example.com")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a key")
    parser.add_argument("--host", default="127.0.0.1", help="where the webhook listens")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--path", default="/webhook")
    parser.add_argument("--calls", type=int, default=None, help="exit after this many calls")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
